"""Stages that run on several processes: launch them under their launcher, fail fast with the failing rank's error.

Ranks stream their own output (prefixed ``[rankN]`` by the worker). A rank that fails writes
``failures/rank<N>.txt``; launchers normally stop the other ranks at once, and if one has not exited
``STOP_GRACE_S`` later the runner stops it. Nothing is published unless every rank succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..stages.common import SettingError, StageError
from ..worker import SETTING_ERROR_FILE

if TYPE_CHECKING:  # pragma: no cover
    from ..plan import StageSpec

log = logging.getLogger("neuralchat_recipes")


STOP_GRACE_S = 10.0  # after a rank fails, how long the launcher gets to stop the others itself


def _stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the launcher's process group (launchers pass it on to their ranks), SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def launch_command(spec: StageSpec, env: dict[str, str]) -> list[str]:
    """The plan's command for this machine: `python` is this interpreter, `$VARS` (per-node values of
    multi-node launches, such as NODE_RANK) come from the environment and must be set."""
    variables = re.compile(r"\$\{?(\w+)\}?")
    missing = [v for arg in spec.launch["command"] for v in variables.findall(arg) if v not in env]
    if missing:
        raise StageError(
            f"stage {spec.name}: the {spec.launch['launcher']} command needs {', '.join(missing)} in the "
            "environment on each node (e.g. NODE_RANK=0 on the master node, 1.. on the others); "
            "set it and run again"
        )
    return [
        sys.executable if arg == "python" else variables.sub(lambda m: env[m.group(1)], arg)
        for arg in spec.launch["command"]
    ]


def launch_stage(spec: StageSpec, staging: Path) -> dict[str, Any]:
    """Run a multi-process stage under its launcher; fail fast, with the failing rank's error.

    The stage's ``final/`` stays in staging when a rank fails and is cleared by the next run.
    """
    failures = staging / "failures"
    shutil.rmtree(failures, ignore_errors=True)
    (staging / "result.json").unlink(missing_ok=True)
    env = {**os.environ, **spec.launch["env"]}
    command = launch_command(spec, env)
    log.info("[%s] launching: %s", spec.name, " ".join(command))
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    failed_at = None
    try:
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
            if failed_at is None and failures.is_dir() and any(failures.glob("rank*.txt")):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > STOP_GRACE_S:
                log.info(
                    "[%s] a rank failed and %s has not stopped the others; stopping them",
                    spec.name,
                    spec.launch["launcher"],
                )
                _stop(proc)
    finally:
        _stop(proc)  # only acts if we leave early (Ctrl-C, an error here)
    errors = sorted(failures.glob("rank*.txt"), key=lambda f: f.stat().st_mtime) if failures.is_dir() else []
    if proc.returncode == 0 and not errors and (staging / "result.json").is_file():
        return json.loads((staging / "result.json").read_text())
    if (failures / SETTING_ERROR_FILE).is_file():  # a setting to change: its sentence, as in one process
        raise SettingError((failures / SETTING_ERROR_FILE).read_text())
    if errors:
        first = errors[0].read_text().strip()
        others = [f.stem for f in errors[1:]]
        cause = first + (f" (then {', '.join(others)} failed too)" if others else "")
        if re.search(r"(?i)connection (reset|closed)|broken pipe", first):
            cause += (
                " - it lost a peer: another rank probably died without a Python error (killed, out of "
                f"memory?); {spec.launch['launcher']}'s report above has its exit code"
            )
    elif proc.returncode and proc.returncode < 0:
        cause = f"{spec.launch['launcher']} was killed by signal {-proc.returncode}"
    else:
        cause = (
            f"a rank died without a Python error (killed, out of memory?); {spec.launch['launcher']} "
            f"exited with status {proc.returncode}"
        )
    raise StageError(
        f"stage {spec.name} failed under {spec.launch['launcher']}: {cause}. The ranks' output is "
        f"above, prefixed [rankN]. Nothing was published; checkpoints stay in {staging / 'checkpoints'} "
        "and the next run resumes from them"
    )

"""Run untrusted Python (generated code, downloaded tests) inside a bubblewrap sandbox, or refuse to.

Generated programs (pass@k, GRPO's code_tests reward) and the tests of a HumanEval-format file someone
downloaded are hostile until shown otherwise. bubblewrap (``bwrap``, Debian/Ubuntu package ``bubblewrap``)
gives each one:

- a new PID namespace: every process the program starts dies with it (on exit or on timeout), and no process
  outside is visible or can be signalled (``os.kill(os.getppid(), 9)`` reaches the sandbox's own init);
- a new network namespace: no network at all, whatever the program does (ctypes, a fresh ``python -c``);
- a read-only view of only what Python needs (/usr, /lib, the interpreter and its virtual environment): no
  home directory, no project files, no hub token file; a private, writable /tmp;
- an empty environment and its own /proc (the evaluating process's environment is not readable);
- another user id (nobody) in a new user namespace, no capabilities, its own session (no terminal);
- resource limits: CPU time, address space, file size, no core dumps; stdout discarded and only the tail of
  stderr read back (a program that floods its output cannot fill the evaluator's memory).

Where bwrap is missing or cannot create namespaces (some containers), a stage that would run such code
refuses to start, saying what is missing, unless the recipe sets ``allow_unsandboxed_code=true``; the program
then runs with the user's privileges, guarded only as OpenAI's human-eval does (limits, a separate session,
no network where ``unshare -n`` works).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from ..stages.common import StageError

# Disables the socket module for the unsandboxed fallback (and names the cause in a failing program's reason
# inside the sandbox too, where the network namespace already has no route anywhere).
NO_NETWORK_PRELUDE = """\
import socket as _socket_module, _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running generated code")
for _name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
    for _mod in (_socket_module, _socket):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)
del _name, _mod
"""

INSTALL_HINT = (
    "install bubblewrap (`apt-get install bubblewrap`, `dnf install bubblewrap`) on a kernel that allows user "
    "namespaces (in Docker: `--security-opt seccomp=unconfined`)"
)
OPT_IN = "allow_unsandboxed_code=true"
NOBODY = 65534
STDERR_TAIL = 4096  # bytes of a program's stderr read back for its failure reason
FILE_SIZE_LIMIT = 10 * 1024 * 1024
# Read-only system directories a Python interpreter needs; any of them may be absent (or a symlink into /usr).
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf")


class SandboxUnavailable(StageError):
    """Untrusted code was about to run without a sandbox and the recipe did not allow it."""


def _python_dirs() -> list[str]:
    """The directories the running interpreter lives in (its base installation and virtual environment)."""
    real = Path(os.path.realpath(sys.executable))
    dirs = {sys.base_prefix, sys.prefix, str(real.parent.parent)}
    return sorted(d for d in dirs if d and os.path.isdir(d))


def bwrap_command(work: str, program: str) -> list[str]:
    """The bwrap command line that runs ``program`` (a file inside ``work``) as described above."""
    exe = shutil.which("bwrap") or "bwrap"
    cmd = [exe, "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    cmd += ["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]
    for d in SYSTEM_DIRS:
        cmd += ["--ro-bind-try", d, d]
    for f in SYSTEM_FILES:
        cmd += ["--ro-bind-try", f, f]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # after the private /tmp: an interpreter or virtual environment under /tmp stays visible (read-only)
    for d in _python_dirs():
        if not any(d == s or d.startswith(s + "/") for s in SYSTEM_DIRS):
            cmd += ["--ro-bind", d, d]
    cmd += ["--ro-bind", work, "/sandbox"]
    cmd += ["--remount-ro", "/", "--chdir", "/tmp"]  # the sandbox's own root stays read-only too; /tmp is its own
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"), ("LANG", "C.UTF-8")):
        cmd += ["--setenv", key, value]
    cmd += ["--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--", sys.executable, "-I", f"/sandbox/{program}"]
    return cmd


@lru_cache(maxsize=1)
def sandbox_problem() -> str | None:
    """None when bwrap can run a program here; else what is missing (checked once per process)."""
    if shutil.which("bwrap") is None:
        return f"bubblewrap (`bwrap`) is not installed; {INSTALL_HINT}"
    with tempfile.TemporaryDirectory(prefix="ncr-sandbox-probe-") as work:
        Path(work, "probe.py").write_text("print('ok')\n")
        try:
            done = subprocess.run(bwrap_command(work, "probe.py"), capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap cannot start here ({exc}); {INSTALL_HINT}"
    if done.returncode != 0 or done.stdout.strip() != b"ok":
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bubblewrap cannot create a sandbox here ({why[-1] if why else f'exit {done.returncode}'}); " + (
            INSTALL_HINT
        )
    return None


def require_sandbox(allow_unsandboxed: bool, what: str) -> None:
    """Raise SandboxUnavailable naming what is missing, unless bwrap works or the recipe opted out."""
    problem = sandbox_problem()
    if problem and not allow_unsandboxed:
        raise SandboxUnavailable(
            f"{what} runs generated code, which needs a sandbox: {problem}. To run it with your own privileges "
            f"instead (only for code you trust), set `{OPT_IN}`"
        )


@lru_cache(maxsize=1)
def _unshare_works() -> bool:
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_untrusted(
    program: str, timeout_s: float = 10.0, memory_mb: int = 1024, allow_unsandboxed: bool = False
) -> tuple[bool, str]:
    """(passed, reason): passed means the program exited 0 within its limits. In the sandbox when bwrap works;
    otherwise only with ``allow_unsandboxed`` (else SandboxUnavailable)."""
    require_sandbox(allow_unsandboxed, "this stage")
    sandboxed = sandbox_problem() is None

    def limits():  # in the child, before exec; inherited by everything it starts
        import resource

        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(math.ceil(timeout_s)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="ncr-code-") as work:
        Path(work, "program.py").write_text(NO_NETWORK_PRELUDE + "\n" + program, encoding="utf-8")
        scratch = Path(work, "scratch")
        scratch.mkdir()
        if sandboxed:
            command, cwd, env = bwrap_command(work, "program.py"), "/", {"PATH": "/usr/bin:/bin"}
        else:
            command = [sys.executable, "-I", str(Path(work, "program.py"))]
            if _unshare_works():
                command = ["unshare", "-n", *command]
            cwd = str(scratch)
            env = {
                "PATH": "/usr/bin:/bin",
                "PYTHONDONTWRITEBYTECODE": "1",
                "HOME": str(scratch),
                "TMPDIR": str(scratch),
            }
        with open(Path(work, "stderr"), "w+b") as err:
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=limits,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)
            err.seek(max(0, os.fstat(err.fileno()).st_size - STDERR_TAIL))
            tail = err.read().decode("utf-8", "replace")
    if timed_out:
        return False, f"timed out after {timeout_s:g}s"
    if proc.returncode == 0:
        return True, "passed"
    lines = [line for line in tail.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode < 0 or proc.returncode > 128:
        number = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        return False, f"killed by signal {number}" + (f" ({last})" if last else "")
    return False, last or f"exit {proc.returncode}"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the program's process group and reap it. In the sandbox, bwrap's death takes its whole PID namespace
    with it (--die-with-parent); unsandboxed, what left the group (setsid) cannot be reached."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)

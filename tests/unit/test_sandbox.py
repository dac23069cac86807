"""Generated code runs in a sandbox that holds: each probe an attacker (or a careless model) would try is
contained, and no process it started outlives it. Without bubblewrap the stage refuses unless the recipe opts in."""

import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from neuralchat_recipes.execution import sandbox
from neuralchat_recipes.execution.sandbox import SandboxUnavailable, run_untrusted, sandbox_problem

needs_bwrap = pytest.mark.skipif(
    sandbox_problem() is not None, reason=f"no working bubblewrap here: {sandbox_problem()}"
)


def strays(marker: str) -> list[int]:
    """Processes on this machine whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def no_strays(marker: str, wait_s: float = 3.0) -> bool:
    deadline = time.monotonic() + wait_s
    while strays(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@needs_bwrap
def test_a_file_outside_the_sandbox_cannot_be_written_and_its_own_root_is_read_only(tmp_path):
    target = tmp_path / "escaped.txt"
    ok, reason = run_untrusted(f"open({str(target)!r}, 'w').write('x')")
    assert not ok and not target.exists(), reason
    ok, reason = run_untrusted("open('/escaped.txt', 'w').write('x')")
    assert not ok and "Read-only file system" in reason
    assert run_untrusted("open('/tmp/scratch', 'w').write('x'); assert open('/tmp/scratch').read() == 'x'")[0]


@needs_bwrap
def test_an_interpreter_under_tmp_is_still_seen_inside_the_sandbox(tmp_path, monkeypatch):
    """The sandbox's private /tmp must not hide a virtual environment that lives under /tmp (a CI clone)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
    monkeypatch.setattr(sys, "prefix", str(venv))
    ok, reason = run_untrusted("import sys; assert sys.executable.startswith('/tmp/')")
    assert ok, reason
    # and it stays read-only there
    ok, reason = run_untrusted(f"open({str(venv / 'escaped.txt')!r}, 'w').write('x')")
    assert not ok and not (venv / "escaped.txt").exists()


@needs_bwrap
def test_secrets_are_out_of_reach_environment_proc_and_files(tmp_path, monkeypatch):
    secret = "hf_" + uuid.uuid4().hex
    monkeypatch.setenv("HF_TOKEN", secret)
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    probes = [
        f"raise SystemExit(open('/proc/{os.getpid()}/environ').read())",
        "import os; raise SystemExit(repr(dict(os.environ)))",
        f"raise SystemExit(open({str(token_file)!r}).read())",
        f"import os; raise SystemExit(repr(os.listdir({str(Path.home())!r})))",
        "import os\nraise SystemExit(' '.join(open(f'/proc/{p}/environ').read() for p in os.listdir('/proc') "
        "if p.isdigit()))",
    ]
    for probe in probes:
        ok, reason = run_untrusted(probe)
        assert secret not in reason, probe
    ok, reason = run_untrusted("import os; raise SystemExit(repr(sorted(os.environ)))")
    assert "HF_TOKEN" not in reason and "PATH" in reason


@needs_bwrap
def test_every_process_the_program_starts_dies_with_it():
    marker = f"1000.{uuid.uuid4().int % 10**8}"
    forks = f"import subprocess\nfor _ in range(20): subprocess.Popen(['sleep', '{marker}'])\n"
    assert run_untrusted(forks)[0]  # exits at once, leaving 20 sleepers behind
    assert no_strays(marker)

    detached = f"import subprocess\nsubprocess.Popen(['setsid', 'sleep', '{marker}'])\nimport time; time.sleep(1000)\n"
    ok, reason = run_untrusted(detached, timeout_s=2)
    assert not ok and "timed out" in reason
    assert no_strays(marker)

    daemon = (
        "import os, subprocess\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    subprocess.Popen(['nohup', 'sleep', '{marker}']).wait()\n"
    )
    assert run_untrusted(daemon)[0]
    assert no_strays(marker)


@needs_bwrap
def test_the_program_cannot_signal_anything_outside():
    mine = threading.Event()
    ok, reason = run_untrusted(
        "import os, signal\nos.kill(os.getppid(), 9)\nos.kill(-1, signal.SIGKILL)\nraise SystemExit(7)"
    )
    mine.set()  # still here: neither the evaluator nor anything else of this machine was killed
    assert not ok and mine.is_set()


@needs_bwrap
def test_no_network_even_through_ctypes_or_a_fresh_interpreter():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    fresh = (
        "import subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-c', 'import socket; socket.create_connection((\"127.0.0.1\", "
        f"{port}), timeout=2)'], capture_output=True, text=True)\n"
        "raise SystemExit(r.returncode and r.stderr.strip().splitlines()[-1])\n"
    )
    raw = (
        "import ctypes, struct\n"
        "libc = ctypes.CDLL(None)\n"
        "fd = libc.socket(2, 1, 0)\n"
        f"addr = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
        "addr = struct.pack('H', 2) + addr[2:]\n"
        "rc = libc.connect(fd, addr, len(addr))\n"
        "raise SystemExit(f'connect returned {rc}' if rc else 0)\n"
    )
    outside = "import urllib.request; urllib.request.urlopen('http://1.1.1.1', timeout=3)"
    results = [run_untrusted(p, timeout_s=6) for p in (fresh, raw, outside)]
    thread.join()
    server.close()
    assert not accepted, "a sandboxed program reached a server on the host's loopback"
    assert all(not ok for ok, _ in results), results


@needs_bwrap
def test_limits_hold_output_flood_file_size_and_memory():
    flood = "import sys\nfor _ in range(200_000): sys.stdout.write('y' * 1000); sys.stderr.write('z' * 1000)\n"
    ok, reason = run_untrusted(flood, timeout_s=20)
    assert len(reason) < sandbox.STDERR_TAIL + 200  # only the tail of stderr is read back
    ok, reason = run_untrusted("open('/tmp/big', 'wb').write(b'x' * (64 * 1024 * 1024))")
    assert not ok and "File too large" in reason
    ok, reason = run_untrusted("x = bytearray(2 * 1024 ** 3)", memory_mb=256)
    assert not ok and "MemoryError" in reason


def test_without_a_sandbox_the_program_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bubblewrap (`bwrap`) is not installed; install it")
    with pytest.raises(SandboxUnavailable) as info:
        run_untrusted("print('hi')")
    assert "bwrap" in str(info.value) and "allow_unsandboxed_code=true" in str(info.value)
    assert run_untrusted("print('hi')", allow_unsandboxed=True) == (True, "passed")


def test_a_pass_at_k_stage_is_refused_before_training_without_a_sandbox(monkeypatch, tmp_path):
    import json

    from neuralchat_recipes.execution.loop import RunError, preflight
    from neuralchat_recipes.plan import build_plan
    from tests.conftest import compose_recipe

    problem = {
        "task_id": "t/0",
        "prompt": "def one():\n",
        "canonical_solution": "    return 1\n",
        "test": "def check(candidate):\n    assert candidate() == 1\n",
        "entry_point": "one",
    }
    data = tmp_path / "humaneval.jsonl"
    data.write_text(json.dumps(problem) + "\n")
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bubblewrap (`bwrap`) is not installed; install it")
    overrides = [
        "recipe=tiny",
        "pipeline=[eval]",
        "eval.harness=pass_at_k",
        "dataset@eval.dataset=humaneval",
        "eval.dataset.hub_id=null",
        f"eval.dataset.path={data}",
        "eval.compare=[]",
        f"output_root={tmp_path / 'out'}",
    ]
    recipe = compose_recipe(*overrides)
    with pytest.raises(RunError) as info:
        preflight(recipe, build_plan(recipe))
    assert "`eval` runs generated code" in str(info.value) and "allow_unsandboxed_code=true" in str(info.value)
    allowed = compose_recipe(*overrides, "allow_unsandboxed_code=true")
    preflight(allowed, build_plan(allowed))  # no complaint


def test_the_real_sandbox_is_used_here_when_bwrap_is_installed():
    """CI installs bubblewrap (.ci/run): there the probes above must run, not be skipped."""
    if os.environ.get("CI_REQUIRES_SANDBOX") != "1":
        pytest.skip("only asserted where CI_REQUIRES_SANDBOX=1 (set by .ci/run)")
    assert sandbox_problem() is None, sandbox_problem()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))

"""One virtual environment per peer tool (LLaMA-Factory, torchtune, axolotl), built once and cached.

    python bench/peer_envs.py [--root DIR] [TOOL ...]

Each tool pins its own versions, so each gets its own venv under DIR (default
~/.cache/neuralchat-recipes/bench-peers/TOOL), never this project's. A venv that finished installing
holds `installed.json` (the tool's version, torch's, and the pip commands used) and is not rebuilt;
one that failed holds `failed.json` with the pip error's last lines, which the bench reports as the
tool's row. Not part of the test suite or CI: it downloads hundreds of megabytes.

torch is installed first as the CPU build this machine has on disk (2.13.0, inside every tool's
range): an unpinned torch from PyPI is a multi-GB CUDA build. LLaMA-Factory imports torchaudio at start-up
(its multimodal plugin), and torchaudio's compiled part loads only beside the torch it was built for, whose
newest PyPI release is 2.11: its venv gets torch 2.11.0 with the matching torchvision and torchaudio (PyPI's
CUDA build, which runs on the CPU; the bench measures the matmul peak inside each venv, so a different torch
shows up as a different peak, not as a faster or slower tool).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CPU_TORCH = ["torch==2.13.0"]
DEFAULT_ROOT = Path.home() / ".cache" / "neuralchat-recipes" / "bench-peers"

# tool -> (the packages as its users install them, the torch they run on)
TOOLS: dict[str, tuple[list[str], list[str]]] = {
    "llamafactory": (["llamafactory==0.9.5"], ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]),
    # torchtune imports torchao (its NF4 tensor) and does not declare it; torchao 0.12 moved that module,
    # so the torchao of torchtune 0.6.1's time
    "torchtune": (["torchtune==0.6.1", "torchao==0.11.0"], CPU_TORCH),
    # the newest axolotl on PyPI (the issue names 0.21; PyPI stops at 0.19.0)
    "axolotl": (["axolotl==0.19.0"], CPU_TORCH),
}


def _pip(venv: Path, args: list[str], log) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"pip install {' '.join(args)} exited {done.returncode}")


def build(tool: str, root: Path) -> dict:
    venv = root / tool
    if (venv / "installed.json").is_file():
        return json.loads((venv / "installed.json").read_text())
    packages, torch = TOOLS[tool]
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "failed.json").unlink(missing_ok=True)
    t0 = time.time()
    with open(venv / "install.log", "w") as log:
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            _pip(venv, ["-U", "pip"], log)
            _pip(venv, torch, log)
            _pip(venv, [*torch, *packages], log)  # torch named again so the tool's resolver keeps it
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            tail = (venv / "install.log").read_text().splitlines()[-25:]
            record = {
                "tool": tool,
                "packages": packages,
                "error": str(exc),
                "log_tail": tail,
                "seconds": time.time() - t0,
            }
            (venv / "failed.json").write_text(json.dumps(record, indent=1))
            return record
    versions = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    )
    installed = {p["name"].lower(): p["version"] for p in json.loads(versions.stdout)}
    record = {
        "tool": tool,
        "version": installed.get(packages[0].split("==")[0]),
        "torch": installed.get("torch"),
        "seconds": round(time.time() - t0),
        "packages": installed,
    }
    (venv / "installed.json").write_text(json.dumps(record, indent=1))
    return record


def python_of(tool: str, root: Path = DEFAULT_ROOT) -> Path:
    return root / tool / "bin" / "python"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tools", nargs="*", default=list(TOOLS), help=f"any of {', '.join(TOOLS)} (default: all)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    a = parser.parse_args()
    for name in a.tools:
        r = build(name, a.root)
        print(json.dumps({k: v for k, v in r.items() if k not in ("packages", "log_tail")}))

"""The artifact store under ``output_root``: content-addressed artifacts, locks, atomic publishing, manifests.

    artifacts/<kind>-<fp16>/     finished stages, never modified (manifest.json inside)
    staging/<kind>-<fp16>/       a stage being computed: checkpoints/ (resume points), final/, recipe.json
    staging/<kind>-<fp16>.lock   held while a process computes that stage; others wait

A stage is published by renaming ``staging/.../final`` (manifest included) to its artifact directory, so an
artifact directory either exists complete or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .secrets import scrub

log = logging.getLogger("neuralchat_recipes")


def is_cached(spec) -> bool:
    return (Path(spec.output_dir) / "manifest.json").is_file()


def read_manifest(spec) -> dict[str, Any]:
    return json.loads((Path(spec.output_dir) / "manifest.json").read_text())


@contextlib.contextmanager
def stage_lock(path: Path, name: str):
    """Exclusive lock on a stage: a second job waits for the first rather than computing it twice. The holder
    removes the lock file before letting go (no empty lock files pile up in staging/); a waiter that then
    holds a removed file's lock sees that the path no longer names its file and locks the path anew."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - closed below, after the lock is released
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("[%s] another run is computing this stage; waiting for it (%s)", name, path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        fh.close()  # its holder removed it while we waited: lock the path's new file
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def fresh_final(staging: Path) -> Path:
    """An empty ``final/`` in the stage's staging dir (what an interrupted run half-wrote is cleared;
    checkpoints stay for the resume)."""
    staging.mkdir(parents=True, exist_ok=True)
    final = staging / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    return final


def publish(staging: Path, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest (secrets scrubbed) into ``final/`` and rename it into the artifact dir, atomically."""
    manifest = scrub(manifest)
    final = staging / "final"
    (final / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(final, out)
    shutil.rmtree(staging, ignore_errors=True)
    return manifest

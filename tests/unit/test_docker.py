"""docker/: one Dockerfile per backend, the same entry point, and build-time checks that validate."""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import plan_for

DOCKER = Path(__file__).resolve().parents[2] / "docker"
FILES = sorted(DOCKER.glob("Dockerfile.*"))


def test_one_dockerfile_per_backend_with_the_same_entry_point():
    assert {f.suffix for f in FILES} == {".gaudi", ".xeon", ".cuda"}
    entries = {re.search(r"^ENTRYPOINT (.+)$", f.read_text(), re.M).group(1) for f in FILES}
    assert entries == {'["/usr/local/bin/neuralchat-entrypoint"]'}
    assert "exec python -m neuralchat_recipes" in (DOCKER / "entrypoint.sh").read_text()


@pytest.mark.parametrize("dockerfile", FILES, ids=lambda f: f.suffix[1:])
def test_the_build_time_validation_command_validates_here(dockerfile):
    text = dockerfile.read_text().replace("\\\n", " ")
    command = re.search(r"python -m neuralchat_recipes (.+?mode=validate)", text).group(1)
    overrides = [a for a in shlex.split(command) if a != "mode=validate"]
    assert plan_for(*overrides).stages


def test_xeon_image_has_the_ssh_port_as_a_build_argument():
    text = (DOCKER / "Dockerfile.xeon").read_text()
    assert "ARG SSHD_PORT=22" in text and "openssh-server" in text and "oneccl_bind_pt" in text

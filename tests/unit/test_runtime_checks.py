"""`mode=run` on hardware this machine does not have fails before anything runs, saying what is missing."""

from tests.conftest import run_cli


def test_gaudi_profile_without_habana_stack(tmp_path):
    proc = run_cli(
        "recipe=tiny",
        "hardware=gaudi2_8x",
        "sft.global_batch_size=16",
        "dpo.global_batch_size=16",
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 2
    assert "cannot run" in proc.stderr and "SynapseAI" in proc.stderr and "hardware=cpu" in proc.stderr
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "runs").exists()


def test_gpu_profile_without_cuda(tmp_path):
    proc = run_cli("recipe=tiny", "hardware=gpu_1x", f"output_root={tmp_path}")
    assert proc.returncode == 2 and "needs 1 CUDA device(s) per node, this machine has 0" in proc.stderr


def test_missing_launcher_binary(tmp_path):
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft]",
        "hardware.devices_per_node=2",
        "hardware.launcher=mpirun",
        f"output_root={tmp_path}",
        env={"PATH": "/nonexistent"},
    )
    assert proc.returncode == 2 and "`mpirun`, which is not on PATH" in proc.stderr

"""Intel Gaudi (optimum-habana).

The plan half (training arguments, GaudiConfig, launch command, environment) is pure Python
so it can be computed and tested without Habana's SynapseAI stack; optimum.habana is imported
only when a stage actually runs on an HPU.
"""

from __future__ import annotations

from typing import Any

from .device import BITSANDBYTES_OPTIMS, Device, DeviceArgs


class GaudiDevice(Device):
    name = "hpu"
    # optimum-habana swaps in its own modules and kernels, which take masks and want static shapes: none of
    # our memory and speed savers apply, and DPO's reference runs inside training as optimum-habana does it;
    # generation may shard the model with DeepSpeed inference, as optimum-habana's run_generation.py does
    capabilities = frozenset({"tensor_parallel_generation"})

    def resolve_optim(self, optim: str, notes: list[str]) -> str:
        if optim in BITSANDBYTES_OPTIMS and self.hw.gaudi.use_fused_adam:
            notes.append(f"optim {optim} is replaced by Habana's fused AdamW (gaudi_config.use_fused_adam)")
        return optim

    def gaudi_config(self) -> dict[str, Any]:
        g = self.hw.gaudi
        return {
            "use_fused_adam": g.use_fused_adam,
            "use_fused_clip_norm": g.use_fused_clip_norm,
            "use_torch_autocast": g.use_torch_autocast,
        }

    def training_args(self, stage, distributed: bool) -> DeviceArgs:
        g = self.hw.gaudi
        hpu_graphs = stage.hpu_graphs_for_training
        return (
            super()
            .training_args(stage, distributed)
            .model_copy(
                update=dict(
                    use_habana=True,
                    use_lazy_mode=g.use_lazy_mode,
                    use_hpu_graphs_for_training=g.use_hpu_graphs_for_training if hpu_graphs is None else hpu_graphs,
                    throughput_warmup_steps=g.throughput_warmup_steps,
                    pipelining_fwd_bwd=g.pipelining_fwd_bwd,
                    gaudi_config=self.gaudi_config(),
                )
            )
        )

    # optimum-habana 1.21's TRL classes follow an older TRL: GaudiSFTTrainer re-collates pre-tokenized
    # samples (losing the prompt mask), GaudiDPOTrainer takes `tokenizer=`. Checked against its source
    # by tests/integration/test_optimum_habana_source.py.
    sft_with_trl = False
    dpo_tokenizer_kwarg = "tokenizer"
    # optimum-habana 1.21's trainers (checked against its source by tests/integration/test_optimum_habana_source.py).
    # It has none for ORPO, CPO/SimPO or KTO, and its GaudiRewardTrainer takes pre-tokenized pairs (an older TRL
    # API): those stages are refused at plan time on Gaudi profiles.
    trainers = {
        "trainer": ("optimum.habana", "GaudiTrainer", "GaudiTrainingArguments"),
        "dpo": ("optimum.habana.trl", "GaudiDPOTrainer", "GaudiDPOConfig"),
        "grpo": ("optimum.habana.trl", "GaudiGRPOTrainer", "GaudiGRPOConfig"),
    }

    def capture_graphs(self, model):  # pragma: no cover - needs Habana's stack
        from habana_frameworks.torch.hpu import wrap_in_hpu_graph

        return wrap_in_hpu_graph(model)

    def trainer_kwargs(self, device_args: DeviceArgs) -> dict[str, Any]:  # pragma: no cover - needs Habana's stack
        from optimum.habana import GaudiConfig

        return {"gaudi_config": GaudiConfig(**device_args.gaudi_config)}

    def device_problems(self) -> list[str]:
        import importlib.util

        missing = [name for name in ("habana_frameworks", "optimum") if importlib.util.find_spec(name) is None]
        if not missing and importlib.util.find_spec("optimum.habana") is None:
            missing.append("optimum.habana")
        if missing:
            return [
                f"hardware {self.hw.name!r} needs Habana's SynapseAI stack and optimum-habana "
                f"({', '.join(missing)} not importable); run inside Habana's container with "
                "`pip install 'neuralchat-recipes[gaudi]'`, or pick a profile for this machine (e.g. hardware=cpu)"
            ]
        return []

    def env(self, zero_stage, model) -> dict[str, str]:
        env = super().env(zero_stage, model)
        if zero_stage == 3:
            env["DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED"] = "1"
        return env

"""The completion-only LM head on CPU: same log-probs and gradients as TRL's all-positions path, fewer rows."""

import torch


def test_completion_only_lm_head_scores_fewer_positions_with_the_same_result(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer import utils
    from trl.trainer.utils import add_fused_lm_head

    from neuralchat_recipes.backends import get_device
    from neuralchat_recipes.stages.train_loop import completion_only_lm_head
    from tests.conftest import compose_recipe

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as TRL's DPOTrainer
    ids = torch.randint(0, 100, (2, 12))
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt
    labels[1, 10:] = -100  # padding
    rows = []
    real_apply = utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        utils._ChunkedLogProbFunction, "apply", lambda h, *a: rows.append(h.shape[0]) or real_apply(h, *a)
    )

    def run():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return (
            out.log_probs.detach().clone(),
            model.lm_head.weight.grad.clone(),
            model.model.layers[0].mlp.up_proj.weight.grad.clone(),
        )

    full = run()
    with completion_only_lm_head(get_device(compose_recipe("hardware=cpu").hardware)):
        compact = run()
    assert not utils._use_triton(torch.device("cpu"))  # restored afterwards
    assert rows == [2 * 11, int((labels[:, 1:] != -100).sum())] and rows[1] < rows[0] / 2
    for a, b in zip(full, compact):
        torch.testing.assert_close(a, b)
    with completion_only_lm_head(get_device(compose_recipe("hardware=gaudi2_1x").hardware)):  # other devices: untouched
        assert not utils._use_triton(torch.device("cpu"))

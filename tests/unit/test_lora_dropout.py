"""LoRA dropout with 16-bit draws (stages/lora_dropout.py): dropout's statistics, its backward, PEFT's models."""

import pytest

torch = pytest.importorskip("torch")

from neuralchat_recipes.stages.lora_dropout import fast_dropout_class, keep_mask, speed_up_lora_dropout  # noqa: E402


def test_it_drops_a_p_share_and_keeps_the_expectation():
    torch.manual_seed(0)
    dropout = fast_dropout_class()(0.05).train()
    assert dropout.p == pytest.approx(0.05, abs=1 / 65536)
    y = dropout(torch.ones(2000, 1000))
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.05, abs=0.001)  # 2M draws: the standard error is 0.00015
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / (1 - dropout.p))]
    assert y.mean().item() == pytest.approx(1.0, abs=0.002)
    # every 16-bit draw of a word counts: each quarter of the mask drops its share
    mask = keep_mask((4_000_000,), round(0.3 * 65536), "cpu").view(-1, 4)
    for quarter in mask.unbind(1):
        assert (~quarter).float().mean().item() == pytest.approx(0.3, abs=0.002)


def test_the_backward_passes_the_gradient_through_the_kept_elements_scaled():
    torch.manual_seed(1)
    dropout = fast_dropout_class()(0.2).train()
    x = torch.randn(64, 48, requires_grad=True)
    y = dropout(x)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    kept = y != 0
    assert 0.7 < kept.float().mean() < 0.9
    assert torch.allclose(y[kept], x.detach()[kept] / (1 - dropout.p))
    assert torch.allclose(x.grad, torch.where(kept, weights / (1 - dropout.p), 0.0))


def test_it_is_the_identity_in_eval_mode_and_seeded_runs_draw_the_same_masks():
    dropout = fast_dropout_class()(0.5)
    x = torch.randn(8, 8)
    assert dropout.eval()(x) is x
    dropout.train()
    torch.manual_seed(3)
    first, second = dropout(torch.ones(100, 100)), dropout(torch.ones(100, 100))
    torch.manual_seed(3)
    assert torch.equal(dropout(torch.ones(100, 100)), first)
    assert not torch.equal(first, second)  # a fresh mask each call


def test_a_peft_models_dropouts_are_swapped_and_its_adapter_is_unchanged():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100
    )
    model = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    keys = set(model.state_dict())
    assert speed_up_lora_dropout(model) == 4  # q and v in two layers
    assert speed_up_lora_dropout(model) == 0  # already swapped
    assert set(model.state_dict()) == keys  # nothing new to save or load
    model.train()
    ids = torch.randint(0, 100, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    # without dropout there is nothing to swap
    plain = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    assert speed_up_lora_dropout(plain) == 0

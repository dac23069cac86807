"""The lean SwiGLU MLP: same outputs and gradients, a third fewer intermediate-sized tensors kept."""

import pytest


@pytest.fixture
def model():
    import torch
    from transformers import AutoModelForCausalLM

    from neuralchat_recipes.tiny_model import resolve_builtin

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"), dtype=torch.float32)


def _loss_and_grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out.loss.item(), grads


def _saved_bytes(model, ids) -> int:
    import torch

    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return total


def test_recomputed_activation_gives_the_same_loss_and_gradients_and_keeps_less(model):
    import torch

    from neuralchat_recipes.stages.activations import recompute_swiglu

    ids = torch.randint(3, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    loss, grads = _loss_and_grads(model, ids)
    kept = _saved_bytes(model, ids)

    layers = model.config.num_hidden_layers
    assert recompute_swiglu(model) == layers
    assert recompute_swiglu(model) == 0  # already switched
    lean_loss, lean_grads = _loss_and_grads(model, ids)
    assert lean_loss == pytest.approx(loss, rel=1e-6)
    assert lean_grads.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(lean_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
    # one [batch, length, intermediate] tensor per layer fewer
    saved = kept - _saved_bytes(model, ids)
    assert saved == layers * ids.numel() * model.config.intermediate_size * 4


def test_other_mlps_are_left_alone():
    import torch.nn as nn

    from neuralchat_recipes.stages.activations import recompute_swiglu

    class GeluMLP(nn.Module):  # same shape, another activation
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
            self.act_fn = nn.GELU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class FusedMLP(GeluMLP):  # SiLU, but another forward
        def __init__(self):
            super().__init__()
            self.act_fn = nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) + self.up_proj(x))

    assert recompute_swiglu(nn.Sequential(GeluMLP(), FusedMLP())) == 0

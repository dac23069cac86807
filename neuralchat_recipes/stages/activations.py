"""Less activation memory in gated (SwiGLU) MLPs: keep the two projections, recompute the activation.

Llama-family MLPs compute ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``. Autograd keeps three
intermediate-sized tensors per token and layer for the backward pass: the gate, its activation
and the up projection. The activation is one cheap elementwise op away from the gate, so
``silu_mul`` keeps only gate and up and recomputes it in the backward: a third less of what
dominates training memory in these models (their intermediate size is ~3.5x hidden), for one
extra elementwise pass. The result and the gradients are the same (tests/unit/test_activations.py).

Only MLP modules whose forward is exactly that expression with SiLU are switched, so models that
differ (fused gate_up projections, other activations, Gaudi's own kernels) are left alone.
"""

from __future__ import annotations

import inspect
import types
from functools import cache

PATTERN = "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"


@cache
def _silu_mul_function():
    import torch
    import torch.nn.functional as F

    class SiluMul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return F.silu(gate).mul_(up)

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
            grad_up = F.silu(gate).mul_(grad) if ctx.needs_input_grad[1] else None
            return grad_gate, grad_up

    return SiluMul


def silu_mul(gate, up):
    """``silu(gate) * up`` that saves gate and up only (the activation is recomputed in the backward)."""
    return _silu_mul_function().apply(gate, up)


def _lean_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


SILU_CLASSES = ("SiLU", "SiLUActivation")  # torch's, and transformers' ACT2FN["silu"]


def _is_swiglu(module) -> bool:
    if not (
        type(getattr(module, "act_fn", None)).__name__ in SILU_CLASSES
        and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
    ):
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return "".join(PATTERN.split()) in "".join(source.split())


def recompute_swiglu(model) -> int:
    """Switch every matching MLP of ``model`` to ``silu_mul``; returns how many were switched."""
    switched = 0
    for module in model.modules():
        if getattr(module.forward, "__func__", None) is not _lean_forward and _is_swiglu(module):
            module.forward = types.MethodType(_lean_forward, module)
            switched += 1
    return switched

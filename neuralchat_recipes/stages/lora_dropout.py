"""LoRA's dropout with masks drawn 16 bits at a time: the same regulariser at a quarter of the random numbers.

PEFT puts an ``nn.Dropout`` before each LoRA adapter's A matrix. On a CPU, torch's dropout draws one random number
per element from a sequential generator (``bernoulli_``): for a model of many thin layers this costs more than the
frozen layer's own GEMM (SmolLM2-135M, 2,048 tokens: ~11 ms per q/k/v/o input against ~7 ms for q_proj's
forward; ~10% of a LoRA training step). Here each 64-bit random word gives four 16-bit uniform draws, and an
element is kept when its draw is at or above p * 65536: p is rounded to a multiple of 1/65,536 (0.05 ->
0.0500031), and the kept elements are scaled by 1 / (1 - that p), so the expectation is preserved exactly. The
draws come from torch's default generator, so a seeded run is reproducible. Only the mask's source differs from
``nn.Dropout``: the backward multiplies by the same saved mask.
"""

from __future__ import annotations

import functools

LEVELS = 1 << 16  # values of one 16-bit draw


def keep_mask(shape, p_levels: int, device):
    """A boolean mask of ``shape``, each element False with probability p_levels / 65,536."""
    import math

    import torch

    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    draws = words.view(torch.int16)[:n]  # four uniform 16-bit draws a word, -32,768..32,767
    return (draws >= p_levels - LEVELS // 2).view(shape)


@functools.cache
def fast_dropout_class():
    """The ``nn.Dropout`` replacement (built on first use: torch is imported only when a stage trains)."""
    import torch

    class KeepAndScale(torch.autograd.Function):
        """x * keep * scale, keeping the boolean mask (one byte an element) for the backward."""

        @staticmethod
        def forward(ctx, x, keep, scale: float):
            ctx.save_for_backward(keep)
            ctx.scale = scale
            return x.mul(keep).mul_(scale)

        @staticmethod
        def backward(ctx, grad):
            (keep,) = ctx.saved_tensors
            return grad.mul(keep).mul_(ctx.scale), None, None

    class FastDropout(torch.nn.Module):
        """Dropout of probability p (rounded to 1/65,536) with its mask drawn 16 bits at a time."""

        def __init__(self, p: float):
            super().__init__()
            self.levels = round(p * LEVELS)
            self.p = self.levels / LEVELS
            self.scale = 1.0 / (1.0 - self.p)

        def forward(self, x):
            if not self.training or self.levels == 0:
                return x
            return KeepAndScale.apply(x, keep_mask(x.shape, self.levels, x.device), self.scale)

        def extra_repr(self) -> str:
            return f"p={self.p}, 16-bit draws"

    return FastDropout


def speed_up_lora_dropout(model) -> int:
    """Swap every LoRA adapter's ``nn.Dropout`` (0 < p < 1) in ``model`` for the 16-bit-draw one; how many were."""
    import torch

    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is torch.nn.Dropout and 0 < dropout.p < 1:
                dropouts[name] = fast_dropout_class()(dropout.p)
                swapped += 1
    return swapped

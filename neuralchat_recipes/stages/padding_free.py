"""Padding-free forward passes for trainers that pad their batches (TRL's DPO and the other preference trainers).

TRL's preference collators right-pad every chosen and rejected sequence of a batch to the longest one, and
the model then computes every padded position: its MLPs, its attention and (without the compact head) its
LM head. Here the model's backbone is wrapped so that such a batch runs as ONE row of the batch's real
tokens, chosen and rejected sequences of several pairs side by side, position ids restarting at each
sequence, and ``ncr_packed_sdpa`` (data/packing.py) attending within each sequence only, as
flash-attention's varlen kernel does. The hidden states are scattered back to the padded layout the trainer
expects (zeros at padding, whose labels are -100 anyway), so the trainer's log-prob sums, losses and metrics
are unchanged: per-sequence log-probs equal the padded run's (tests/unit/test_padding_free.py).

Only batches it can undo are unpadded: a 2-D right-padded attention mask, no cache (generation keeps the
original path), no position ids or embeddings of the caller's own, no hidden states asked for.
"""

from __future__ import annotations

import functools
import inspect


def _right_padded(mask) -> bool:
    return bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())


def unpad_backbone(model) -> bool:
    """Make ``model``'s backbone run right-padded batches padding-free; False where the model cannot keep
    unpadded sequences apart (no transformers attention interface, no position ids)."""
    from ..data.packing import use_packed_attention

    backbone = getattr(model, "base_model", model)
    if backbone is model or "position_ids" not in inspect.signature(backbone.forward).parameters:
        return False
    if not use_packed_attention(model):
        return False
    original = backbone.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        input_ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if (
            args
            or input_ids is None
            or mask is None
            or mask.dim() != 2
            or kwargs.get("position_ids") is not None
            or kwargs.get("past_key_values") is not None
            or kwargs.get("cache") is not None
            or kwargs.get("use_cache")
            or kwargs.get("inputs_embeds") is not None
            or kwargs.get("output_hidden_states")
            or not _right_padded(mask)
        ):
            return original(*args, **kwargs)
        import torch

        keep = mask.bool()
        rows, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(rows, length)[keep]
        kwargs.update(input_ids=input_ids[keep][None], attention_mask=None, position_ids=positions[None])
        out = original(**kwargs)
        hidden = out.last_hidden_state[0]
        where = keep.flatten().nonzero().squeeze(1)
        padded = hidden.new_zeros(rows * length, hidden.shape[-1]).index_copy(0, where, hidden)
        out.last_hidden_state = padded.view(rows, length, hidden.shape[-1])
        return out

    backbone.forward = forward
    return True

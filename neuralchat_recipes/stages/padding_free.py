"""Padding-free forward passes for trainers that pad their batches (TRL's DPO and the other preference trainers).

TRL's preference collators right-pad every chosen and rejected sequence of a batch to the longest one, and
the model then computes every padded position: its MLPs, its attention and (without the compact head) its
LM head. Here the model's backbone is wrapped so that such a batch runs as ONE row of the batch's real
tokens, chosen and rejected sequences of several pairs side by side, position ids restarting at each
sequence, and ``ncr_packed_sdpa`` (data/packed_attention.py) attending within each sequence only, as
flash-attention's varlen kernel does. A pair's chosen and rejected sequences begin with the same prompt:
that prefix runs once, the rejected answer following it as a branch that attends to the prompt and itself
(``_unpadded_row``). The hidden states are scattered back to the padded layout the trainer expects (zeros
at padding, whose labels are -100 anyway), so the trainer's log-prob sums, losses and metrics are
unchanged: per-sequence log-probs equal the padded run's (tests/unit/test_padding_free.py). One difference
in distribution, not in expectation: with LoRA dropout a shared prompt draws one dropout mask for both
answers where the padded run draws two.

Only batches it can undo are unpadded: a 2-D right-padded attention mask, no cache (generation keeps the
original path), no position ids or embeddings of the caller's own, no hidden states asked for.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from pydantic import Field

from ..config.base import NOT_FINGERPRINTED
from .common import log
from .kind import PlanContext, PlanError


def padding_free_field() -> Any:
    """The `padding_free` setting of the kinds whose trainers pad their batches (dpo, orpo, cpo, kto)."""
    return Field(
        default=None,
        description="Run each batch's sequences (a pair's chosen and rejected ones) side by side in one row without "
        "padding, each attending only to itself, a pair's shared prompt computed once (same log-probs, no work on "
        "padding). null: on unless batches are padded to max_length or the device has no per-sample attention.",
        json_schema_extra=NOT_FINGERPRINTED,
    )


def resolve_padding_free(p: PlanContext, requested: bool | None, pad_to_max: bool = False) -> bool:
    """Whether the stage runs padding-free: as asked, or (null) wherever the device attends per sample and
    batches are not padded to a static shape; a request the device or the padding cannot honour is an error."""
    attends_per_sample = p.device.can("per_sample_attention")
    if requested and pad_to_max:
        raise PlanError(
            [
                f"`{p.name}.padding_free` and `{p.name}.pad_to_max` contradict each other (padding every batch "
                "to max_length, or none at all); set one of them to false"
            ]
        )
    if requested and not attends_per_sample:
        hw = p.hardware
        raise PlanError(
            [
                f"`{p.name}.padding_free`: hardware {hw.name!r} ({hw.device}) has no per-sample attention to keep "
                "unpadded sequences apart; set it to false or null"
            ]
        )
    return (attends_per_sample and not pad_to_max) if requested is None else requested


def apply_padding_free(ctx, model, padded: str = "batches padded to their longest sequence") -> str:
    """Unpad ``model``'s batches when the stage runs padding-free; how its batches are padded, for the manifest."""
    if not ctx.args.padding_free:
        return padded
    if unpad_backbone(model, ctx.args.packed_attention):
        return "none: each batch's sequences in one row, per-sample attention"
    log.info(
        "[%s] %s cannot run padding-free (no attention interface); batches stay padded", ctx.name, type(model).__name__
    )
    return padded


def _right_padded(mask) -> bool:
    return bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())


def unpad_backbone(model, kernel: str = "auto") -> bool:
    """Make ``model``'s backbone run right-padded batches padding-free; False where the model cannot keep
    unpadded sequences apart (no transformers attention interface, no position ids)."""
    from ..data.packed_attention import use_packed_attention

    backbone = getattr(model, "base_model", model)
    if backbone is model or "position_ids" not in inspect.signature(backbone.forward).parameters:
        return False
    if not use_packed_attention(model, kernel):
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
        forward.unpadded += 1
        ids, positions, gather, shared = _unpadded_row(input_ids, mask)
        forward.shared_prefix_tokens += shared
        kwargs.update(input_ids=ids[None], attention_mask=None, position_ids=positions[None])
        out = original(**kwargs)
        hidden = out.last_hidden_state[0].index_select(0, gather)
        rows, length = input_ids.shape
        where = mask.bool().flatten().nonzero().squeeze(1)
        padded = hidden.new_zeros(rows * length, hidden.shape[-1]).index_copy(0, where, hidden)
        out.last_hidden_state = padded.view(rows, length, hidden.shape[-1])
        return out

    forward.unpadded = 0  # forward passes that ran unpadded (the manifest's `unpadded_forwards`)
    forward.shared_prefix_tokens = 0  # tokens computed once for two sequences (`shared_prefix_tokens`)
    backbone.forward = forward
    return True


def _unpadded_row(input_ids, mask):
    """A right-padded batch as one row: (token ids, position ids, the row's index of each real token of the
    batch in row-major order, tokens shared).

    A trainer's batch of 2n rows is [chosen; rejected] (TRL's preference collators), so row i and row i + n
    begin with the same prompt. Their common prefix runs once: row i's tokens, then row i + n's tokens after
    the prefix as a branch whose position ids continue from the prefix length; ``packed_sdpa`` lets a branch
    attend to its sample's prefix and to itself. A causal model's hidden states over a prefix do not depend on
    what follows it, so both rows get exactly the states they would have alone, and the backward sums the two
    rows' gradients into the shared positions. Rows that share nothing (or an odd batch) just sit side by side.
    """
    import torch

    keep = mask.bool()
    rows = input_ids.shape[0]
    lengths = keep.sum(1)
    shared = [0] * rows
    if rows % 2 == 0 and rows > 0:
        half = rows // 2
        same = (input_ids[:half] == input_ids[half:]) & keep[:half] & keep[half:]
        common = same.long().cumprod(1).sum(1)
        # each row keeps at least one token of its own: the branch starts after its prefix
        common = torch.minimum(common, torch.minimum(lengths[:half], lengths[half:]) - 1).clamp(min=0)
        shared = [0] * half + common.tolist()
        order = [r for i in range(half) for r in (i, i + half)]
    else:
        order = list(range(rows))
    lengths = lengths.tolist()
    ids, positions, index = [], [], [None] * rows
    offset = 0
    for r in order:
        start = shared[r]
        n = lengths[r] - start
        ids.append(input_ids[r, start : lengths[r]])
        positions.append(torch.arange(start, lengths[r], device=input_ids.device))
        own = torch.arange(offset, offset + n, device=input_ids.device)
        index[r] = torch.cat([index[r - rows // 2][:start], own]) if start else own
        offset += n
    return torch.cat(ids), torch.cat(positions), torch.cat(index), sum(shared)


def padding_metrics(padding: str, model) -> dict[str, Any]:
    """The manifest's account of padding: how batches were padded, how many forward passes ran unpadded (a
    batch the wrapper cannot undo, such as a left-padded one, takes the padded path and is not counted), and
    how many tokens a shared prompt saved computing twice."""
    forward = getattr(model, "base_model", model).forward
    unpadded = getattr(forward, "unpadded", None)
    if unpadded is None:
        return {"padding": padding}
    return {"padding": padding, "unpadded_forwards": unpadded, "shared_prefix_tokens": forward.shared_prefix_tokens}

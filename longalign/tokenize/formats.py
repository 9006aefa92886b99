"""Chat formats: turn a validated conversation into one text plus the character spans that carry loss.

Every format renders a conversation to a single string and a list of ``(start, end)`` character spans;
:mod:`longalign.tokenize` then tokenizes the string and marks the tokens of those spans as targets.
Rendering to text (instead of assembling token ids by hand) keeps one tokenization path for all formats
and makes the result equal to what the model's own chat template produces for the same conversation.

Target spans (what the model is trained to write)::

    template  <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n[Hello!<|im_end|>]\\n ...
    llama2    <s>[INST] <<SYS>>\\nsys\\n<</SYS>>\\n\\nHi [/INST][ Hello! </s>]<s>[INST] Bye [/INST][ Ciao </s>]
    chatglm3  [gMASK]sop<|user|>\\n Hi<|assistant|>[\\n Hello!<|user|>]\\n Bye<|assistant|>[\\n Ciao</s>]

(brackets mark the spans; they are not part of the text). A reply's span includes the token that closes
the turn (the end-of-turn special token of a chat template, ``</s>`` for Llama-2, and for ChatGLM3 the
next role token or the final ``</s>``), so the model learns to stop. An empty reply has no span at all:
its closing token is masked too, otherwise the model would learn to answer with nothing.

Messages after the last assistant reply are not rendered: no loss can come from them and they would
only lengthen the sequence.

For ``template`` the reply spans are found by rendering the conversation incrementally with the
tokenizer's own chat template: the prompt up to reply *i* (with the generation prompt) must be a prefix
of the conversation up to and including reply *i*, which must be a prefix of the whole conversation; the
text in between is the reply plus its closing. Templates that render history differently from the last
turn (e.g. templates that drop reasoning from earlier replies) break that property and are reported
per row instead of producing wrong masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CHAT_FORMATS = ("template", "llama2", "chatglm3")
ROLES = ("system", "user", "assistant")

LLAMA2_SYS_OPEN = "<<SYS>>\n"
LLAMA2_SYS_CLOSE = "\n<</SYS>>\n\n"
CHATGLM3_PREFIX = ("[gMASK]", "sop")
CHATGLM3_ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")


class RowError(ValueError):
    """A conversation that cannot be tokenized; ``problem`` says what is wrong and ``fix`` how to repair it."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


@dataclass
class Rendered:
    """A conversation as one string; ``spans`` are sorted, disjoint ``(start, end)`` target character spans."""

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)

    def pieces(self) -> list[tuple[str, bool]]:
        """The text cut at every span boundary, as ``(piece, is_target)``; empty pieces are left out."""
        out: list[tuple[str, bool]] = []
        pos = 0
        for start, end in self.spans:
            if start > pos:
                out.append((self.text[pos:start], False))
            if end > start:
                out.append((self.text[start:end], True))
            pos = end
        if pos < len(self.text):
            out.append((self.text[pos:], False))
        return out


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check the ``messages`` list of one record; raises :class:`RowError` naming the problem and the fix.

    Accepted: a non-empty list of ``{"role": "system"|"user"|"assistant", "content": str}`` objects, with a
    system message only in first position. Extra keys in a message are ignored.
    """
    if messages is None:
        raise RowError(
            'no "messages" field',
            'each line needs {"messages": [{"role": "user", "content": "..."}, '
            '{"role": "assistant", "content": "..."}], ...}',
        )
    if not isinstance(messages, list):
        raise RowError(
            f'"messages" is a {type(messages).__name__}, not a list',
            'write "messages" as a list of {"role", "content"} objects',
        )
    if not messages:
        raise RowError('"messages" is empty', "remove the line or add the conversation's messages")
    out = []
    for j, msg in enumerate(messages, 1):
        if not isinstance(msg, dict):
            raise RowError(
                f"message {j} is a {type(msg).__name__}, not an object",
                'write each message as {"role": ..., "content": ...}',
            )
        role = msg.get("role")
        if role not in ROLES:
            hint = ""
            if role in ("human", "gpt", "bot", "model"):
                hint = " (ShareGPT-style roles: map human to user and gpt/bot/model to assistant)"
            raise RowError(f"message {j} has role {role!r}", f"use one of {', '.join(ROLES)}{hint}")
        if "content" not in msg:
            raise RowError(f'message {j} ({role}) has no "content"', 'add the message text as "content"')
        content = msg["content"]
        if not isinstance(content, str):
            kind = "null" if content is None else type(content).__name__
            raise RowError(
                f"message {j} ({role}) has {kind} content, not text",
                "give the content as one string (join multi-part content into text)",
            )
        if role == "system" and j != 1:
            raise RowError(
                f"message {j} is a system message after the first message",
                "put the system message first or merge it into a user message",
            )
        out.append({"role": role, "content": content})
    return out


def drop_trailing_prompt(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The messages up to and including the last assistant reply (all of them if there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return list(messages[: i + 1])
    return list(messages)


def special_token_strings(tokenizer: Any) -> list[str]:
    """Texts of the tokenizer's special tokens (named ones and added tokens flagged special), longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for tok in decoder.values():
        if getattr(tok, "special", False):
            found.add(str(tok.content if hasattr(tok, "content") else tok))
    return sorted((s for s in found if s), key=len, reverse=True)


def _first_special(text: str, start: int, specials: Sequence[str]) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None
    for s in specials:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(s))
    return best


def render_template(
    tokenizer: Any, messages: Sequence[dict[str, str]], specials: Sequence[str] | None = None
) -> Rendered:
    """Render with the tokenizer's chat template; reply spans are found by incremental rendering."""
    if not getattr(tokenizer, "chat_template", None):
        raise RowError(
            "the tokenizer has no chat template",
            "use --format llama2 or --format chatglm3, or a tokenizer that ships a chat template",
        )
    specials = special_token_strings(tokenizer) if specials is None else specials
    messages = drop_trailing_prompt(messages)

    def render(msgs, gen):
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or not msg["content"].strip():
            continue
        upto = full if i == len(messages) - 1 else render(messages[: i + 1], False)
        if not full.startswith(upto):
            raise RowError(
                f"the chat template renders reply {i + 1} differently once later turns follow",
                "span detection needs a template whose history is a prefix of the whole "
                "conversation; use --format llama2 or chatglm3, or another tokenizer",
            )
        prompt = render(messages[:i], True) if i > 0 else ""
        content = msg["content"].strip()
        if i > 0 and upto.startswith(prompt):
            start = len(prompt)
        else:  # no usable generation prompt: locate the reply text itself
            start = upto.rfind(content)
            if start < 0:
                raise RowError(
                    f"reply {i + 1} does not appear in the text rendered by the chat template",
                    "use --format llama2 or chatglm3, or another tokenizer",
                )
        found = upto.find(content, start)
        content_end = found + len(content) if found >= 0 else start
        closing = _first_special(upto, content_end, specials)
        end = closing[1] if closing else content_end
        if spans and start < spans[-1][1]:
            raise RowError(
                f"reply {i + 1} overlaps the previous reply in the rendered text",
                "use --format llama2 or chatglm3, or another tokenizer",
            )
        if end > start:
            spans.append((start, end))
    return Rendered(full, spans)


def render_llama2(messages: Sequence[dict[str, str]], bos: str, eos: str) -> Rendered:
    """Llama-2-chat: ``<s>[INST] user [/INST] reply </s>`` per exchange, system prompt in ``<<SYS>>``."""
    messages = drop_trailing_prompt(messages)
    system = None
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"]
        messages = messages[1:]
    for j, msg in enumerate(messages):
        want = "user" if j % 2 == 0 else "assistant"
        if msg["role"] != want:
            n = j + 1 + (system is not None)
            raise RowError(
                f"message {n} is {msg['role']!r} where the llama2 format needs {want!r} "
                "(user and assistant must alternate, starting with user)",
                "merge consecutive messages of the same role, or use --format template",
            )
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for k in range(0, len(messages) - 1, 2):
        user = messages[k]["content"].strip()
        if k == 0 and system is not None and system.strip():
            user = f"{LLAMA2_SYS_OPEN}{system.strip()}{LLAMA2_SYS_CLOSE}{user}"
        prompt = f"{bos}[INST] {user} [/INST]"
        reply = messages[k + 1]["content"].strip()
        answer = f" {reply} {eos}"
        parts += [prompt, answer]
        pos += len(prompt)
        if reply:
            spans.append((pos, pos + len(answer)))
        pos += len(answer)
    if len(messages) % 2 == 1:  # only a user message (no reply anywhere): render it as a prompt
        user = messages[-1]["content"].strip()
        if len(messages) == 1 and system is not None and system.strip():
            user = f"{LLAMA2_SYS_OPEN}{system.strip()}{LLAMA2_SYS_CLOSE}{user}"
        parts.append(f"{bos}[INST] {user} [/INST]")
    return Rendered("".join(parts), spans)


def render_chatglm3(messages: Sequence[dict[str, str]], eos: str) -> Rendered:
    """ChatGLM3: ``[gMASK]sop<|user|>\\n text<|assistant|>\\n reply ... </s>``.

    A reply's span starts right after ``<|assistant|>`` (ChatGLM3 writes its metadata line, here empty,
    then the reply) and ends with the token that closes it: the next role token or the final ``</s>``.
    """
    messages = drop_trailing_prompt(messages)
    text = "".join(CHATGLM3_PREFIX)
    spans: list[tuple[int, int]] = []
    open_start: int | None = None
    for msg in messages:
        marker = f"<|{msg['role']}|>"
        if open_start is not None:
            spans.append((open_start, len(text) + len(marker)))
            open_start = None
        text += marker
        if msg["role"] == "assistant" and msg["content"].strip():
            open_start = len(text)
        text += "\n " + msg["content"]
    if open_start is not None:
        spans.append((open_start, len(text) + len(eos)))
    if messages and messages[-1]["role"] == "assistant":
        text += eos
    return Rendered(text, spans)


def render(
    chat_format: str, tokenizer: Any, messages: Sequence[dict[str, str]], specials: Sequence[str] | None = None
) -> Rendered:
    """Render validated ``messages`` in ``chat_format`` (one of :data:`CHAT_FORMATS`)."""
    if chat_format == "template":
        return render_template(tokenizer, messages, specials)
    if chat_format == "llama2":
        return render_llama2(messages, _required_token(tokenizer, "bos"), _required_token(tokenizer, "eos"))
    if chat_format == "chatglm3":
        return render_chatglm3(messages, _required_token(tokenizer, "eos"))
    raise ValueError(f"chat format {chat_format!r} is not accepted; use one of {', '.join(CHAT_FORMATS)}")


def _required_token(tokenizer: Any, name: str) -> str:
    value = getattr(tokenizer, f"{name}_token", None)
    if not value:
        raise ValueError(
            f"the tokenizer has no {name} token, which this chat format needs; "
            f"set tokenizer.{name}_token or use --format template"
        )
    return str(value)


def format_markers(chat_format: str, tokenizer: Any) -> list[str]:
    """The marker strings a format writes that should each be one token of the tokenizer."""
    if chat_format == "llama2":
        return [str(t) for t in (tokenizer.bos_token, tokenizer.eos_token) if t]
    if chat_format == "chatglm3":
        return [*CHATGLM3_PREFIX, *CHATGLM3_ROLE_MARKERS] + ([str(tokenizer.eos_token)] if tokenizer.eos_token else [])
    return []

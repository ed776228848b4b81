"""What the run's chat template does, read off by rendering probe conversations.

An exported model is only right if the runtime wraps turns exactly as training did, stops
where the model was taught to stop, and adds BOS exactly once. Rather than guess those from
file names or model families, they are measured: the template tunesmith trained with is
rendered on conversations with marker contents, and the text around the markers is the
format (role prefixes and suffixes, the generation prompt, a default system prompt, the
end-of-turn token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tunesmith.export.errors import ExportError

_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
ROLES = ("system", "user", "assistant")
_MARK = "\u2063{role}{index}\u2063"


def runtime_template(template: str) -> str:
    """The template without transformers-only ``{% generation %}`` tags (llama.cpp refuses them)."""
    return _GENERATION_TAG.sub("", template)


@dataclass(frozen=True)
class ChatFormat:
    template: str
    """The chat template for runtimes: the one training rendered with, minus training-only tags."""
    preamble: str
    """Text before the first turn (a BOS written by the template, for example)."""
    prefixes: dict[str, str]
    suffixes: dict[str, str]
    generation_prompt: str
    default_system: str | None
    """The system prompt the template inserts when a conversation has none."""
    end_of_turn_ids: tuple[int, ...]
    """Every token id that ends an assistant turn, as the model was trained to emit it."""
    template_writes_bos: bool

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt as this format writes it; equal to the Jinja rendering (checked on export)."""
        turns = list(messages)
        if self.default_system is not None and (not turns or turns[0]["role"] != "system"):
            turns.insert(0, {"role": "system", "content": self.default_system})
        body = "".join(
            self.prefixes[m["role"]] + m["content"] + self.suffixes[m["role"]] for m in turns
        )
        return self.preamble + body + self.generation_prompt


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], prompt: bool
) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def _mark(role: str, index: int) -> str:
    return _MARK.format(role=role, index=index)


def read_chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """Measure the format of the tokenizer's chat template; ExportError when it has none or
    its turns cannot be told apart by fixed text (a template that rewrites contents)."""
    if not tokenizer.chat_template:
        raise ExportError(
            "the run's tokenizer has no chat template; export needs one to write the runtime's "
            "prompt format. Train from a chat/instruct model."
        )
    conversation = [{"role": r, "content": _mark(r, i)} for i, r in enumerate(ROLES)]
    full = _render(tokenizer, conversation, prompt=False)
    pieces = _split_on_marks(full, conversation)
    suffixes = {
        role: _split_on_marks(
            _render(tokenizer, conversation[: i + 1], False), conversation[: i + 1]
        )[-1]
        for i, role in enumerate(ROLES)
    }
    prefixes: dict[str, str] = {}
    for index, role in enumerate(ROLES):
        gap = pieces[index]
        before = suffixes[ROLES[index - 1]] if index else ""
        if not gap.startswith(before):
            raise ExportError(_irregular(tokenizer, "the text between turns depends on both turns"))
        prefixes[role] = gap[len(before) :]
    preamble, prefixes["system"] = _preamble(
        prefixes["system"], prefixes["user"], tokenizer.bos_token
    )
    with_prompt = _render(tokenizer, conversation[:2], prompt=True)
    without = _render(tokenizer, conversation[:2], prompt=False)
    if not with_prompt.startswith(without):
        raise ExportError(_irregular(tokenizer, "the generation prompt is not appended"))
    chat = ChatFormat(
        template=runtime_template(tokenizer.chat_template),
        preamble=preamble,
        prefixes=prefixes,
        suffixes=suffixes,
        generation_prompt=with_prompt[len(without) :],
        default_system=_default_system(tokenizer, prefixes, suffixes, preamble),
        end_of_turn_ids=_end_of_turn_ids(tokenizer, suffixes["assistant"]),
        template_writes_bos=bool(tokenizer.bos_token) and full.startswith(tokenizer.bos_token),
    )
    _check_reproduces(tokenizer, chat)
    return chat


def _split_on_marks(text: str, conversation: list[dict[str, str]]) -> list[str]:
    """The literal text before each message's content, then the text after the last one."""
    pieces, rest = [], text
    for message in conversation:
        before, found, rest = rest.partition(message["content"])
        if not found:
            raise ExportError(
                "the chat template does not write message contents verbatim (it rewrote "
                f"{message['role']!r}); the runtime format cannot be derived. Use --to hf."
            )
        pieces.append(before)
    return [*pieces, rest]


def _preamble(system_prefix: str, user_prefix: str, bos: str | None) -> tuple[str, str]:
    """Split a BOS the template writes once at the start off the first turn's prefix.

    A BOS that also opens every user turn (ChatML's ``<|im_start|>`` is SmolLM2's BOS) is part
    of the turn format, not a preamble.
    """
    if bos and system_prefix.startswith(bos) and not user_prefix.startswith(bos):
        return bos, system_prefix[len(bos) :]
    return "", system_prefix


def _default_system(
    tokenizer: PreTrainedTokenizerBase,
    prefixes: dict[str, str],
    suffixes: dict[str, str],
    preamble: str,
) -> str | None:
    user = {"role": "user", "content": _mark("user", 9)}
    text = _render(tokenizer, [user], prompt=False)[len(preamble) :]
    opening = prefixes["system"]
    if not text.startswith(opening):
        return None
    content, found, _ = text[len(opening) :].partition(suffixes["system"] + prefixes["user"])
    return content if found else None


def _end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, assistant_suffix: str) -> tuple[int, ...]:
    """The special tokens that close an assistant turn, then EOS if it differs."""
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    ids = tokenizer(assistant_suffix, add_special_tokens=False).input_ids
    closing = [i for i in ids if i in special][:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in closing:
        closing.append(tokenizer.eos_token_id)
    if not closing:
        raise ExportError(
            "the chat template closes an assistant turn with no special token and the tokenizer "
            "has no EOS; a runtime would never know where to stop."
        )
    return tuple(closing)


def _irregular(tokenizer: PreTrainedTokenizerBase, why: str) -> str:
    name = getattr(tokenizer, "name_or_path", "the tokenizer")
    return f"cannot derive a runtime prompt format from the chat template of {name}: {why}."


def _check_reproduces(tokenizer: PreTrainedTokenizerBase, chat: ChatFormat) -> None:
    samples = [
        [{"role": "user", "content": "Hi there"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
    ]
    for sample in samples:
        if chat.render(sample) != _render(tokenizer, sample, prompt=True):
            raise ExportError(_irregular(tokenizer, "its turns are not fixed text around contents"))

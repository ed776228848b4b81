"""The tokenizer as llama.cpp reads it: a byte-level BPE vocabulary with its merges, the
token kinds, the special ids and the pre-tokenizer name.

The pre-tokenizer is named from the shape of ``tokenizer.json`` (llama.cpp picks its split
regex by that name); the export's verification then tokenizes the held-out prompts in
llama.cpp and compares ids with transformers, so a wrong name cannot ship unnoticed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gguf
from transformers import PreTrainedTokenizerBase

from tunesmith.export.chat_format import ChatFormat
from tunesmith.export.errors import ExportError

_GPT2_BYTE_LEVEL = {"type": "ByteLevel", "use_regex": True}


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int
    end_of_turn_id: int
    unknown_id: int | None
    padding_id: int | None
    add_bos: bool

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        if self.bos_id is not None:
            writer.add_bos_token_id(self.bos_id)
        writer.add_eos_token_id(self.eos_id)
        writer.add_eot_token_id(self.end_of_turn_id)
        if self.unknown_id is not None:
            writer.add_unk_token_id(self.unknown_id)
        if self.padding_id is not None:
            writer.add_pad_token_id(self.padding_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)


def pre_tokenizer_name(tokenizer_json: dict, *, known: str | None = None) -> str:
    """llama.cpp's name for the split before BPE; ``known`` is the base GGUF's own name."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if all(pre.get(key) == value for key, value in _GPT2_BYTE_LEVEL.items()):
        return known or "gpt-2"
    shape = json.dumps(pre)[:200]
    raise ExportError(
        f"the tokenizer's pre-tokenizer ({shape}) is not one this GGUF writer maps to a "
        "llama.cpp name (byte-level BPE with the GPT-2 split is). Use --to hf instead."
    )


def _token_types(tokenizer: PreTrainedTokenizerBase, size: int) -> list[int]:
    kinds = [gguf.TokenType.NORMAL] * size
    for index, added in tokenizer.added_tokens_decoder.items():
        if index < size:
            kinds[index] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    return [int(kind) for kind in kinds]


def _merges(model: dict) -> list[str]:
    return [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]


def read_vocab(
    tokenizer: PreTrainedTokenizerBase,
    chat: ChatFormat,
    vocab_size: int,
    *,
    known_pre: str | None = None,
) -> GGUFVocab:
    """The GGUF vocabulary of ``tokenizer``, padded to the model's embedding rows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizers) tokenizer; use --to hf instead.")
    description = json.loads(backend.to_str())
    model = description["model"]
    if model.get("type") != "BPE":
        raise ExportError(
            f"the tokenizer is {model.get('type')}, not byte-level BPE; this GGUF writer covers "
            "byte-level BPE vocabularies. Use --to hf instead."
        )
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = _token_types(tokenizer, vocab_size)
    for index in range(vocab_size):
        if index not in by_id:
            types[index] = int(gguf.TokenType.UNUSED)
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=_merges(model),
        pre=pre_tokenizer_name(description, known=known_pre),
        bos_id=tokenizer.bos_token_id,
        eos_id=chat.end_of_turn_ids[-1]
        if tokenizer.eos_token_id is None
        else tokenizer.eos_token_id,
        end_of_turn_id=chat.end_of_turn_ids[0],
        unknown_id=tokenizer.unk_token_id,
        padding_id=tokenizer.pad_token_id,
        add_bos=_adds_bos(tokenizer) and not chat.template_writes_bos,
    )


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer itself puts BOS before plain text (its post-processor)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return bool(ids) and ids[0] == tokenizer.bos_token_id

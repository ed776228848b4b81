"""Everything an export target needs from a run, loaded once: the fine-tuned and merged
models, the training tokenizer and its measured chat format, and the held-out prompts."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import gguf
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

import tunesmith
from tunesmith.config import RunConfig
from tunesmith.data.load import prepare_configured_records
from tunesmith.data.records import Conversation
from tunesmith.evaluate.generate import split_prompt_and_reference
from tunesmith.evaluate.metrics import METRICS, default_metric_names
from tunesmith.evaluate.perplexity import load_forgetting_text
from tunesmith.export.chat_format import ChatFormat, read_chat_format
from tunesmith.export.errors import ExportError
from tunesmith.export.gguf_model import Provenance
from tunesmith.export.gguf_vocab import GGUFVocab, read_vocab
from tunesmith.export.llama_layout import LlamaShape
from tunesmith.export.source import ExportSource
from tunesmith.export.verify import HeldOut, Reference, Verification, reference, verify
from tunesmith.methods import get_method
from tunesmith.models.bundled import BUNDLED_MODELS, gguf_path
from tunesmith.runs import TrainedModel, load_trained

Notice = Callable[[str], None]


def bundled_base_gguf(model_name: str) -> Path | None:
    """The shipped GGUF file of a bundled base: the exact weights its runs trained against."""
    return gguf_path(model_name) if model_name in BUNDLED_MODELS else None


def _known_pre_tokenizer(model_name: str) -> str | None:
    path = bundled_base_gguf(model_name)
    if path is None:
        return None
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else None


def _prompt_items(config: RunConfig) -> list[Conversation]:
    """The run's test conversations; its validation (then training) ones when it kept no test
    split: the checks compare two runtimes on the same weights, not the model's quality."""
    prepared = prepare_configured_records(config.data)
    for split in (prepared.test, prepared.validation, prepared.train):
        items = [
            r
            for r in split
            if isinstance(r, Conversation)
            and len(r.messages) > 1
            and r.messages[-1].role == "assistant"
        ]
        if items:
            return items
    raise ExportError(
        "the run's data has no conversations ending in an assistant reply, so the export "
        "cannot be checked against transformers; pass --no-verify to skip the checks."
    )


@dataclass
class ExportInputs:
    source: ExportSource
    trained: TrainedModel
    say: Notice = field(default=lambda _line: None)
    """Where progress lines go (the CLI prints them; long steps announce themselves)."""

    @classmethod
    def load(
        cls, source: ExportSource, *, trust_remote_code: bool = False, say: Notice | None = None
    ) -> ExportInputs:
        trained = load_trained(source.run_dir, trust_remote_code=trust_remote_code, device="cpu")
        return cls(source=source, trained=trained, say=say or (lambda _line: None))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.trained.tokenizer

    @property
    def model_name(self) -> str:
        return self.source.config.model.name

    @cached_property
    def merged(self) -> PreTrainedModel:
        """The adapter folded into a copy of the base, fp32 (the method refuses what cannot
        merge); the copy keeps the adapter model whole for the LoRA and base exports."""
        method = get_method(self.source.config.method.name)
        return method.merge(copy.deepcopy(self.trained.model)).float().eval()

    @cached_property
    def chat(self) -> ChatFormat:
        return read_chat_format(self.tokenizer)

    @cached_property
    def shape(self) -> LlamaShape:
        return LlamaShape.from_config(self.base_config)

    @property
    def base_config(self) -> PretrainedConfig:
        return self.trained.model.config

    @cached_property
    def vocab(self) -> GGUFVocab:
        return read_vocab(
            self.tokenizer,
            self.chat,
            self.shape.vocab_size,
            known_pre=_known_pre_tokenizer(self.model_name),
        )

    def provenance(self, kind: str) -> Provenance:
        config = self.source.config
        return Provenance(
            name=f"{self.source.name} ({kind})",
            base_model=self.model_name,
            run_id=self.source.name,
            method=config.method.name,
            tunesmith_version=tunesmith.__version__,
            datasets=tuple(path.name for path in config.data.train),
        )

    def trained_system_prompt(self) -> str | None:
        """The system prompt every training conversation opened with, if they share one."""
        train = [
            r
            for r in prepare_configured_records(self.source.config.data).train
            if isinstance(r, Conversation)
        ]
        firsts = {r.messages[0].content if r.messages[0].role == "system" else None for r in train}
        return next(iter(firsts)) if len(firsts) == 1 else None

    def held_out(self, items: int) -> HeldOut:
        config = self.source.config
        test = _prompt_items(config)
        pairs = [split_prompt_and_reference(item) for item in test[:items]]
        metric = (config.eval.metrics or default_metric_names(test) or ["rouge_l"])[0]
        if METRICS[metric.partition(":")[0]].needs_labels:
            metric = "exact_match"  # label runs: the generated label, matched exactly
        return HeldOut(
            prompts=[prompt for prompt, _ in pairs],
            references=[reference for _, reference in pairs],
            metric=metric,
            general_text=load_forgetting_text(config.eval.forgetting_text),
            max_new_tokens=min(config.eval.max_new_tokens, 64),
        )

    def reference(self, held_out: HeldOut) -> Reference:
        """transformers' side of the checks, once per export, shared by every file."""
        self.say(f"transformers' greedy replies to {len(held_out.prompts)} held-out prompts")
        return reference(self.merged, self.tokenizer, self.chat, held_out)

    def verify(
        self, path: Path, held_out: HeldOut, ref: Reference, *, lora: Path | None = None
    ) -> Verification:
        """One written GGUF (with ``lora`` on it, if given) in llama.cpp against ``ref``."""
        return verify(
            path, self.tokenizer, self.chat, self.vocab.add_bos, held_out, ref, self.merged,
            lora=lora,
        )  # fmt: skip

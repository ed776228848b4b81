"""The models one server answers for, with one copy of each base in memory.

A run whose adapter is a peft LoRA that peft can mix in one batch is loaded as a
named adapter on the shared base of every such run with the same base model; the base
itself is served under its own name (``__base__`` rows of the same batches). Any
other run (full fine-tune, frozen layers, bottleneck adapters, prompt learning,
quantized bases, DoRA) is loaded on its own with `tunesmith.runs.load_trained`, the
loader `tunesmith generate` uses. Each model answers with its own run's tokenizer and
chat template (saved in ``final/``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tunesmith.errors import TunesmithError
from tunesmith.evaluate.generate import _stop_token_ids
from tunesmith.methods import get_method
from tunesmith.models import Precision, load_base_model, pick_device, resolve_precision
from tunesmith.models.autocast_paths import store_frozen_linears_in
from tunesmith.models.loading import resolve_model_path
from tunesmith.models.packed_linear import pack_linears, packed_bytes
from tunesmith.runs import RunError, RunPaths, load_trained, read_run_config
from tunesmith.serve import grouped_lora

BASE_ROW = "__base__"


class RegistryError(TunesmithError):
    """A run that cannot be served as asked (a duplicate name, a missing run)."""


@dataclass
class ServedModel:
    """What a request for ``id`` runs on, and what `/v1/models` says about it."""

    id: str
    module: nn.Module
    adapter: str | None
    tokenizer: PreTrainedTokenizerBase
    stop_ids: list[int]
    pad_id: int
    context_length: int
    fingerprint: str
    created: int
    parent: str | None
    run_dir: Path | None
    score: dict[str, object] | None
    base_key: str | None
    """The shared base this model lives on (None: a model of its own)."""
    precision: Precision
    """What its forward passes compute in: the run's rule (on a shared base, the first run's)."""

    def card(self) -> dict[str, object]:
        card: dict[str, object] = {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "tunesmith",
            "parent": self.parent,
            "root": str(self.run_dir) if self.run_dir else self.id,
        }
        if self.score is not None:
            card["evaluation"] = self.score
        return card


@dataclass
class _SharedBase:
    model: PeftModel
    base_id: str
    adapters: set[str]
    precision: Precision


def fingerprint(weights_dir: Path, tokenizer: PreTrainedTokenizerBase) -> str:
    """``fp_`` + a hash of the weights files, the chat template and the tokenizer: the same
    string means the same answers, so a served answer can be traced to its run and eval."""
    digest = hashlib.sha256()
    for path in sorted(weights_dir.glob("*.safetensors")):
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    template = tokenizer.chat_template
    digest.update(json.dumps(template, sort_keys=True).encode())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (weights_dir / name).is_file():
            digest.update((weights_dir / name).read_bytes())
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    return "fp_" + digest.hexdigest()[:12]


def headline_score(run_dir: Path) -> dict[str, object] | None:
    """The primary metric of the run's evaluation: fine-tuned vs the best baseline."""
    results = RunPaths(run_dir).eval / "results.json"
    if not results.is_file():
        return None
    try:
        comparison = json.loads(results.read_text(encoding="utf-8"))["comparison"]
        primary = comparison["metrics"][0]
        values = primary["values"]
        best = primary.get("best_baseline")
        return {
            "metric": primary["metric"],
            "fine_tuned": values[comparison["candidate"]]["estimate"],
            "best_baseline": values[best]["estimate"] if best in values else None,
            "beats_baseline": comparison.get("beats_baseline"),
            "n_items": comparison.get("n_items"),
        }
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def base_model_id(model_name: str) -> str:
    """The base under its bundled name, or a local model dir under the dir's own name."""
    return Path(model_name).name if ("/" in model_name or "\\" in model_name) else model_name


def _run_tokenizer(run_dir: Path, fallback: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    final = RunPaths(run_dir).final
    if not (final / "tokenizer_config.json").is_file():
        return fallback
    tokenizer = AutoTokenizer.from_pretrained(final)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _mixes_in_one_batch(run_dir: Path) -> bool:
    """A plain peft LoRA on an unquantized base: peft mixes those per row (``adapter_names``)."""
    config = read_run_config(run_dir)
    method = get_method(config.method.name)
    if method.artifact != "peft-adapter" or not method.switches_off:
        return False
    if method.base_load_options(config.method):
        return False
    adapter_config = PeftConfig.from_pretrained(RunPaths(run_dir).final)
    return isinstance(adapter_config, LoraConfig) and not adapter_config.use_dora


class Registry:
    """Served models by id. Only the decoder thread may call `add` and `remove` while
    serving (they change the modules the decoder runs)."""

    def __init__(self, device: str = "auto") -> None:
        self.device = pick_device(device)
        self.models: dict[str, ServedModel] = {}
        self._bases: dict[str, _SharedBase] = {}

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def packed_bytes(self) -> int:
        """Memory the decoding kernels' packed weights take now
        (`tunesmith.models.packed_linear`); a base shared by several runs counts once."""
        modules = {id(m.module): m.module for m in self.models.values() if m.module is not None}
        return sum(packed_bytes(module) for module in modules.values())

    def base_names(self) -> list[str]:
        """The model names (bundled names or local dirs) of the bases loaded to serve runs."""
        return list(self._bases)

    def add(self, run_dir: Path, name: str | None = None) -> list[ServedModel]:
        """Serve a run (and its base, the first time that base is needed); returns what
        became available."""
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        final = RunPaths(run_dir).final
        if not final.is_dir():
            raise RunError(f"{final} is missing: the run has not finished training.")
        model_id = name or run_dir.resolve().name
        if model_id in self.models:
            raise RegistryError(
                f"a model named {model_id!r} is already served; give this run another name "
                "(NAME=RUN_DIR on the command line, `name` in the admin request)."
            )
        added: list[ServedModel] = []
        if _mixes_in_one_batch(run_dir):
            shared, new_base = self._shared_base(config, final, model_id)
            if new_base is not None:
                added.append(new_base)
            else:
                shared.model.load_adapter(final, adapter_name=model_id, is_trainable=False)
            grouped_lora.install(shared.model)  # again: the new adapter may add layers
            shared.adapters.add(model_id)
            module, adapter, parent = shared.model, model_id, shared.base_id
            precision = shared.precision
            base_key = str(config.model.name)
            fallback = self.models[shared.base_id].tokenizer
        else:
            trained = load_trained(run_dir, device=str(self.device))
            module, adapter, base_key = trained.model, None, None
            precision = trained.precision
            parent = base_model_id(str(config.model.name))
            fallback = trained.tokenizer
        module.requires_grad_(False)  # served weights never train
        if precision.compute != precision.weights:  # new adapters' layers too
            store_frozen_linears_in(module, precision.compute, copy_tied=True)
        pack_linears(module)  # a base shared again is packed already
        tokenizer = _run_tokenizer(run_dir, fallback)
        served = self._served(
            model_id, module, adapter, tokenizer, final, parent, base_key, precision
        )
        served.run_dir = run_dir
        served.score = headline_score(run_dir)
        self.models[model_id] = served
        added.append(served)
        return added

    def remove(self, model_id: str) -> None:
        """Stop serving a run; its adapter's weights are freed (the base stays)."""
        served = self.models.get(model_id)
        if served is None:
            raise RegistryError(f"no model named {model_id!r} is served")
        if served.run_dir is None:
            raise RegistryError(f"{model_id!r} is a base model; remove the runs on it instead")
        del self.models[model_id]
        if served.base_key is not None:
            shared = self._bases[served.base_key]
            shared.adapters.discard(served.adapter)
            if shared.adapters:
                shared.model.delete_adapter(served.adapter)
            # peft keeps at least one adapter; the last one stays loaded, unlisted and unused
        elif served.module is not None:
            served.module.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def replace(self, model_id: str, run_dir: Path) -> ServedModel:
        """Serve ``run_dir`` as ``model_id`` instead of the run it served (a promotion).

        The new run is loaded first under a staging id, so ``model_id`` always answers.
        """
        staging = f"{model_id}@{Path(run_dir).resolve().name}"
        self.add(run_dir, staging)
        self.remove(model_id)
        served = self.models.pop(staging)
        served.id = model_id
        self.models[model_id] = served
        return served

    def _shared_base(
        self, config, final: Path, first_adapter: str
    ) -> tuple[_SharedBase, ServedModel | None]:
        key = str(config.model.name)
        if key in self._bases:
            return self._bases[key], None
        precision = resolve_precision(config.train.precision, self.device)
        loaded = load_base_model(
            config.model.name,
            device=self.device,
            dtype=precision.weights,
            cache_dir=config.model.cache_dir,
            trust_remote_code=config.model.trust_remote_code,
        )
        model = PeftModel.from_pretrained(
            loaded.model, final, adapter_name=first_adapter, is_trainable=False
        )
        model.eval()
        base_id = base_model_id(key)
        if base_id in self.models:
            raise RegistryError(f"a run is named like the base model {base_id!r}; rename the run")
        shared = _SharedBase(model=model, base_id=base_id, adapters=set(), precision=precision)
        self._bases[key] = shared
        base_path = resolve_model_path(key, config.model.cache_dir)
        base = self._served(
            base_id, model, BASE_ROW, loaded.tokenizer, base_path, None, key, precision
        )
        self.models[base_id] = base
        return shared, base

    def _served(
        self,
        model_id: str,
        module: nn.Module,
        adapter: str | None,
        tokenizer: PreTrainedTokenizerBase,
        weights_dir: Path,
        parent: str | None,
        base_key: str | None,
        precision: Precision,
    ) -> ServedModel:
        stop_ids = _stop_token_ids(module, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        config = getattr(module, "config", None) or module.get_base_model().config
        return ServedModel(
            id=model_id,
            module=module,
            adapter=adapter,
            tokenizer=tokenizer,
            stop_ids=stop_ids,
            pad_id=pad_id,
            context_length=int(getattr(config, "max_position_embeddings", 2048)),
            fingerprint=fingerprint(weights_dir, tokenizer),
            created=int(time.time()),
            parent=parent,
            run_dir=None,
            score=None,
            base_key=base_key,
            precision=precision,
        )

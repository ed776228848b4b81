"""The run's tokenizer, for descriptors in the model's own tokens (no weights loaded)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from tunesmith.runs import RunPaths, read_run_config


def run_tokenizer(run_dir: Path) -> object:
    """The tokenizer saved with the run's `final/`, else the base model's.

    Remote code is never run for it: a run directory cannot grant that.
    """
    final = RunPaths(run_dir).final
    if (final / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(final)
    from tunesmith.cli_data import load_tokenizer

    config = read_run_config(run_dir)
    config.model.trust_remote_code = False
    return load_tokenizer(config)

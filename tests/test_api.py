"""The Python API and the CLI are one front door: the same config gives the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tunesmith import api
from tunesmith.chat import reply
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.runs import base_model_of, load_trained

runner = CliRunner()

WITH_EVAL = [
    "data.split=[0.6, 0.2, 0.2]",
    "eval.enabled=true",
    "eval.max_new_tokens=4",
    "eval.k_shot=1",
    "eval.max_items=4",
    "train.max_steps=3",
]


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_the_same_config_through_the_api_and_the_cli_gives_the_same_run(run_setup) -> None:
    config, workdir = run_setup
    through_cli = workdir / "cli"
    through_api = workdir / "api"
    overrides = [item for setting in WITH_EVAL for item in ("--set", setting)]
    result = runner.invoke(
        app, ["train", str(config), "--set", f"output.dir={through_cli}", *overrides]
    )
    assert result.exit_code == 0, result.output

    run_config = load_config(config, [*WITH_EVAL, f"output.dir={through_api}"])
    summary = api.train(run_config, show_progress=False)
    evaluation = api.evaluate(summary.run_dir)

    cli_run, api_run = through_cli / "resume", through_api / "resume"
    assert summary.run_dir == api_run and cli_run.is_dir()
    assert _files(cli_run / "final") == _files(api_run / "final")
    cli_weights = load_file(cli_run / "final" / "adapter_model.safetensors")
    api_weights = load_file(api_run / "final" / "adapter_model.safetensors")
    assert cli_weights.keys() == api_weights.keys()
    for name, tensor in cli_weights.items():
        torch.testing.assert_close(tensor, api_weights[name], rtol=0, atol=0)
    cli_results = json.loads((cli_run / "eval" / "results.json").read_text())
    api_results = json.loads(evaluation.results_path.read_text())
    assert cli_results["outputs"] == api_results["outputs"]
    assert cli_results["comparison"] == api_results["comparison"]


@pytest.mark.parametrize(
    "method",
    [
        "{name: lora, r: 4, alpha: 64, dropout: 0}",
        "{name: full}",
        "{name: freeze, trainable_layers: 1}",
        "{name: adapter, adapter_size: 8}",
    ],
    ids=["lora", "full", "freeze", "adapter"],
)
def test_base_is_the_untrained_model_for_every_method(
    method: str, run_setup, tiny_model_dir: Path
) -> None:
    config, workdir = run_setup
    out = workdir / "runs"
    trained = runner.invoke(
        app,
        ["train", str(config), "--no-eval", "--set", f"output.dir={out}", "--set",
         f"method={method}", "--set", "train.learning_rate=0.05"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    run = load_trained(out / "resume")
    untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = run.tokenizer("capital of France?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tuned_logits = run.model(ids).logits
        with base_model_of(run) as base:
            base_logits = base(ids).logits
        untrained_logits = untrained(ids).logits
    torch.testing.assert_close(base_logits, untrained_logits, atol=1e-5, rtol=0)
    assert not torch.allclose(tuned_logits, untrained_logits, atol=1e-3)  # training did move it

    messages = [{"role": "user", "content": "capital of France?"}]
    expected = reply(untrained, run.tokenizer, messages, max_new_tokens=8)
    result = runner.invoke(
        app,
        ["generate", str(out / "resume"), "-p", "capital of France?", "--max-new-tokens", "8",
         "--base"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected

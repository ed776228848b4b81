"""The real `tunesmith` CLI on the tiny model: what a user runs, and what they get."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tests.conftest import build_tiny_model
from tunesmith.cli import app
from tunesmith.runs import load_trained

runner = CliRunner()


def test_train_writes_a_run_that_peft_loads_without_tunesmith(run_setup) -> None:
    config, workdir = run_setup
    run_dir = workdir / "runs" / "cli"
    result = runner.invoke(
        app,
        [
            "train",
            str(config),
            "--set",
            f"output.dir={workdir / 'runs'}",
            "--set",
            "output.name=cli",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trainable: 4,096 of" in result.output
    assert "validation loss" in result.output

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["method"]["name"] == "lora"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "train_loss" in line] == [1, 2, 3, 4, 5, 6]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["rows_in"] == report["rows_kept"] + report["rows_dropped"]

    final = run_dir / "final"
    assert (final / "adapter_config.json").is_file()
    assert (final / "adapter_model.safetensors").is_file()
    ours = load_trained(run_dir)
    base = AutoModelForCausalLM.from_pretrained(saved["model"]["name"])
    theirs = PeftModel.from_pretrained(base, final).eval()
    ids = ours.tokenizer("What is two plus two?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours.model(ids).logits, atol=1e-5, rtol=0)
        with theirs.disable_adapter():
            base_logits = theirs(ids).logits
    assert not torch.allclose(base_logits, ours.model(ids).logits)  # the adapter does something


@pytest.fixture
def speaking_setup(run_setup, tiny_tokenizer) -> tuple[Path, Path, Path]:
    """run_setup on a tiny base whose embeddings are scaled up, trained long enough that the
    fine-tuned model answers with text (a random tiny model ends its turn at once, and an
    empty answer would match any command). Returns (config, workdir, base model dir)."""
    config, workdir = run_setup
    base_dir = workdir / "speaking-base"
    base = build_tiny_model(len(tiny_tokenizer))
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(10)
    base.save_pretrained(base_dir, safe_serialization=True)
    tiny_tokenizer.save_pretrained(base_dir)
    settings = yaml.safe_load(config.read_text())
    settings["model"]["name"] = str(base_dir)
    settings["method"].update(r=8, alpha=64, dropout=0.0)
    # fp32: these tests compare the commands' answers with `reply` called here by hand, and
    # under bf16 autocast this tiny model ends its turn at once (the precision rule itself
    # is tested in tests/models/test_precision.py).
    settings["train"].update(max_steps=30, eval_every=100, precision="fp32")
    config.write_text(yaml.safe_dump(settings))
    return config, workdir, base_dir


PROMPT = "say goodbye"


def test_generate_streams_the_fine_tuned_answer_and_base_gives_the_base_one(
    speaking_setup,
) -> None:
    from tunesmith.chat import reply

    config, workdir, base_dir = speaking_setup
    out = workdir / "runs"
    trained = runner.invoke(app, ["train", str(config), "--set", f"output.dir={out}", "--no-eval"])
    assert trained.exit_code == 0, trained.output
    messages = [{"role": "user", "content": PROMPT}]
    ours = load_trained(out / "resume")
    fine_tuned = reply(ours.model, ours.tokenizer, messages, max_new_tokens=12)
    untrained = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    base_answer = reply(untrained, ours.tokenizer, messages, max_new_tokens=12)
    assert fine_tuned, "the fine-tuned tiny model must answer with text for this test to bite"
    assert fine_tuned != base_answer

    for extra, expected in (([], fine_tuned), (["--base"], base_answer)):
        result = runner.invoke(
            app,
            ["generate", str(out / "resume"), "--prompt", PROMPT, "--max-new-tokens", "12",
             *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.output.strip() == expected, extra


def test_config_mistakes_exit_2_with_the_key_and_no_traceback(run_setup) -> None:
    config, _ = run_setup
    result = runner.invoke(app, ["train", str(config), "--set", "train.epoch=2"])
    assert result.exit_code == 2
    assert "train.epoch: unknown key. Did you mean 'train.epochs'?" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["train", "--data", "no/such/file.jsonl"])
    assert missing.exit_code == 2
    assert "no/such/file.jsonl" in missing.output


def test_bad_data_is_refused_before_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    rows = [json.dumps(good)] * 11 + ['{"messages": [']
    data.write_text("\n".join(rows) + "\n")
    result = runner.invoke(
        app, ["train", "--data", str(data), "--set", f"model.name={tiny_model_dir}"]
    )
    assert result.exit_code == 2
    assert "bad.jsonl:12" in result.output and "invalid_json" in result.output


def test_no_tracker_is_imported_unless_asked(run_setup) -> None:
    config, workdir = run_setup
    probe = (
        "import sys\n"
        "from tunesmith.cli import app\n"
        f"app(['train', {str(config)!r}, '--no-eval'], standalone_mode=False)\n"
        "loaded = [m for m in ('wandb', 'mlflow', 'tensorboard', 'torch.utils.tensorboard')"
        " if m in sys.modules]\n"
        "print('TRACKERS', loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "TRACKERS []" in result.stdout


def test_merge_writes_a_plain_model_with_the_same_logits(run_setup) -> None:
    config, workdir = run_setup
    out = workdir / "runs"
    assert runner.invoke(app, ["train", str(config), "--set", f"output.dir={out}"]).exit_code == 0
    result = runner.invoke(app, ["merge", str(out / "resume")])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(out / "resume" / "merged").eval()
    ours = load_trained(out / "resume")
    ids = ours.tokenizer("capital of Italy?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ours.model(ids).logits, atol=1e-4, rtol=0)


def test_merge_of_prompt_tuning_explains_why_not(run_setup) -> None:
    config, workdir = run_setup
    out = workdir / "runs"
    trained = runner.invoke(
        app, ["train", str(config), "--set", f"output.dir={out}", "--set", "method={name: prompt}"]
    )
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["merge", str(out / "resume")])
    assert result.exit_code == 2
    assert "prompt" in result.output and "Traceback" not in result.output


def test_chat_keeps_the_conversation_and_ends_on_an_empty_line(speaking_setup) -> None:
    from tunesmith.chat import reply

    config, workdir, _ = speaking_setup
    out = workdir / "runs"
    assert runner.invoke(app, ["train", str(config), "--set", f"output.dir={out}"]).exit_code == 0
    ours = load_trained(out / "resume")
    first = reply(ours.model, ours.tokenizer, [{"role": "user", "content": PROMPT}],
                  max_new_tokens=4)  # fmt: skip
    assert first, "the fine-tuned tiny model must answer with text for this test to bite"
    second = reply(
        ours.model,
        ours.tokenizer,
        [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first},
         {"role": "user", "content": "capital of France?"}],
        max_new_tokens=4,
    )  # fmt: skip
    result = runner.invoke(
        app,
        ["chat", str(out / "resume"), "--max-new-tokens", "4"],
        input=f"{PROMPT}\ncapital of France?\n/reset\n{PROMPT}\n\n",
    )
    assert result.exit_code == 0, result.output
    answers = [line.split("model> ", 1)[1].strip() for line in result.output.splitlines()
               if "model> " in line]  # fmt: skip
    # The second turn sees the first (history kept); after /reset the same answer comes back.
    assert answers == [first, second, first]


def test_a_full_disk_stops_training_with_its_own_exit_code_and_the_numbers(
    run_setup, monkeypatch
) -> None:
    from tunesmith.engine import checkpoint

    config, workdir = run_setup
    real_disk_usage = checkpoint.shutil.disk_usage
    monkeypatch.setattr(
        checkpoint.shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=1000)
    )
    result = runner.invoke(app, ["train", str(config), "--set", f"output.dir={workdir}/runs"])
    assert result.exit_code == checkpoint.DISK_FULL_EXIT_CODE == 74
    assert "1000 bytes are free" in result.output
    assert "step-2" in result.output and "Traceback" not in result.output


def test_eval_and_compare_run_through_the_cli(speaking_setup) -> None:
    config, workdir, _ = speaking_setup
    out = workdir / "runs"
    split = ["--set", "data.split=[0.6,0.2,0.2]", "--no-eval"]
    trained = runner.invoke(app, ["train", str(config), "--set", f"output.dir={out}", *split])
    assert trained.exit_code == 0, trained.output
    run_dir = out / "resume"
    not_yet = runner.invoke(app, ["compare", str(run_dir)])
    assert not_yet.exit_code == 2 and "tunesmith eval" in not_yet.output

    evaluated = runner.invoke(app, ["eval", str(run_dir), "--max-items", "4"])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert f"report: {run_dir / 'eval' / 'report.html'}" in evaluated.output
    assert (run_dir / "eval" / "report.html").is_file()

    compared = runner.invoke(app, ["compare", str(run_dir)])
    assert compared.exit_code == 0, compared.output
    primary = results["comparison"]["metrics"][0]
    estimates = [
        f"{primary['values'][name]['estimate']:.3f}" for name in results["comparison"]["systems"]
    ]
    row = next(line for line in compared.output.splitlines() if "lora" in line)
    assert primary["metric"] in row
    assert [cell.strip() for cell in row.split("│")[4:7]] == estimates

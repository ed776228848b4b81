"""``tunesmith data prepare`` and ``data show`` through the real CLI on the tiny model."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from transformers import AutoTokenizer
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.cli_data import load_tokenizer, print_example
from tunesmith.config import load_config
from tunesmith.data.cache import tokenizer_fingerprint
from tunesmith.data.records import Source
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.models.loading import load_base_model

from .conftest import chat_row, write_rows
from .test_tokenize_speed_and_errors import MISTRAL_LIKE

runner = CliRunner(env={"COLUMNS": "300"})
LONG_ROWS = (31, 32, 33)


def long_row(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Tell me everything, part {i}. " * 30},
            {"role": "assistant", "content": f"Everything {i}."},
        ]
    }


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """30 ordinary chat rows then 3 over-long ones, and a config on the tiny model."""
    write_rows(
        tmp_path / "data.jsonl", [chat_row(i) for i in range(30)] + [long_row(i) for i in range(3)]
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f'model: {{name: "{tiny_model_dir}"}}\n'
        "data: {train: data.jsonl, max_length: 200}\n"
        f'output: {{dir: "{tmp_path / "runs"}"}}\n'
    )
    return config


def invoke(*args: str):
    return runner.invoke(app, ["data", *args])


def test_prepare_writes_the_report_and_reuses_the_cache(project, tmp_path) -> None:
    cache = str(tmp_path / "cache")
    first = invoke("prepare", str(project), "--cache-dir", cache)
    assert first.exit_code == 0, first.output
    assert "cache: train miss, validation miss, test miss" in first.output
    assert "rows in 33, kept 30" in first.output and "dropped 3;" in first.output
    assert "dropped 3/33 (9.1%) examples over 200 tokens" in first.output
    assert re.search(r"\[\[Answer \d+ about .*?<\|im_end\|>\n\]\]", first.output)

    run_dir = tmp_path / "runs" / "tiny"
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["dropped"]["over_length"]["count"] == 3
    assert report["token_stats"]["examples"] == report["splits"]["train"]
    assert report["rows_in"] == report["rows_kept"] + report["rows_dropped"] == 33
    assert (run_dir / "token_lengths.png").is_file()

    second = invoke("prepare", str(project), "--cache-dir", cache)
    assert second.exit_code == 0, second.output
    assert "cache: train hit, validation hit, test hit" in second.output
    assert json.loads((run_dir / "data_report.json").read_text()) == report


def test_overlength_error_policy_lists_every_long_row(project, tmp_path) -> None:
    result = invoke(
        "prepare", str(project), "--set", "data.on_overlength=error",
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    listed = re.findall(r"data\.jsonl:(\d+): \[over_length\]", result.output)
    assert sorted(int(line) for line in listed) == list(LONG_ROWS)


def test_template_errors_are_listed_for_every_row(tmp_path, tiny_model_dir) -> None:
    model = tmp_path / "mistral-like"
    shutil.copytree(tiny_model_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = MISTRAL_LIKE
    tokenizer.save_pretrained(model)
    rows = [chat_row(i) for i in range(30)]
    for i in (2, 6):
        rows[i]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    write_rows(tmp_path / "data.jsonl", rows)
    config = tmp_path / "mistral.yaml"
    config.write_text(
        f'model: {{name: "{model}"}}\ndata: {{train: data.jsonl, split: [1.0, 0.0, 0.0]}}\n'
    )
    result = invoke("prepare", str(config), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    listed = re.findall(r"data\.jsonl:(\d+): \[template_render_failed\]", result.output)
    assert sorted(int(line) for line in listed) == [3, 7]
    assert result.output.count("Conversation roles must alternate") == 2


def test_invalid_data_exits_two_with_the_report(project, tmp_path) -> None:
    data = tmp_path / "data.jsonl"
    lines = data.read_text().splitlines()
    lines[4] = '{"messages": ['
    data.write_text("\n".join(lines) + "\n")
    result = invoke("prepare", str(project), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2
    assert "invalid_json" in result.output and "data.jsonl:5" in result.output
    assert "Traceback" not in result.output


def test_show_prints_examples_with_trained_tokens_marked(project) -> None:
    result = invoke("show", str(project), "--n", "2")
    assert result.exit_code == 0, result.output
    headers = re.findall(r"data\.jsonl:\d+  tokens (\d+)  trained (\d+)", result.output)
    assert len(headers) == 2
    assert all(0 < int(trained) < int(tokens) for tokens, trained in headers)
    marked = re.findall(r"\[\[(.*?)\]\]", result.output, flags=re.DOTALL)
    assert len(marked) == 2
    assert all(re.fullmatch(r"Answer \d+ about .*<\|im_end\|>\n", m) for m in marked)
    assert "<|im_start|>user\nQuestion" in result.output  # the prompt is shown, unmarked


def test_show_other_splits_and_rejects_unknown_ones(project) -> None:
    validation = invoke("show", str(project), "--n", "1", "--split", "validation")
    assert validation.exit_code == 0, validation.output
    assert len(re.findall(r"\[\[", validation.output)) == 1
    bad = invoke("show", str(project), "--split", "dev")
    assert bad.exit_code == 2
    assert "not a split" in bad.output


def test_terminal_output_is_styled_not_bracketed(tiny_tokenizer) -> None:
    ids = tiny_tokenizer("<|im_start|>user\nhello<|im_end|>\nPari", add_special_tokens=False)[
        "input_ids"
    ]
    labels = [-100] * (len(ids) - 2) + ids[-2:]
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=120)
    print_example(console, tiny_tokenizer, TokenizedExample(ids, labels, Source("d.jsonl", 1)))
    output = buffer.getvalue()
    assert "[[" not in output
    assert re.search(r"\x1b\[1;32;48;[\d;]+mri\x1b", output)  # bold green on a background
    assert "\x1b[2mPa\x1b" in output  # the untrained rest is dim


def test_prepare_and_train_load_the_same_tokenizer_key(project, tiny_model_dir) -> None:
    config = load_config(project)
    trainer_tokenizer = load_base_model(str(tiny_model_dir)).tokenizer
    assert tokenizer_fingerprint(load_tokenizer(config)) == tokenizer_fingerprint(trainer_tokenizer)


def test_a_model_without_tokenizer_is_a_clear_error(project, tmp_path, tiny_model_dir) -> None:
    bare = tmp_path / "bare-model"
    bare.mkdir()
    shutil.copy(tiny_model_dir / "config.json", bare / "config.json")
    for name, expected in ((str(bare), "cannot load its tokenizer"), ("no/such-model", "neither")):
        result = invoke("show", str(project), "--set", f"model.name={name}")
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output

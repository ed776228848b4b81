"""Bad input through the real CLI: exit code 2, a message that names the fix, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

runner = CliRunner()


def _chat_file(path: Path, rows: int = 12) -> Path:
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
            for i in range(rows)
        )
    )  # fmt: skip
    return path


BAD_TRAIN_INPUTS = [
    # (case, extra args, what the message must contain)
    ("unknown metric", ["--set", "eval.metrics=[acuracy]"], "did you mean 'accuracy'"),
    ("unknown format", ["--set", "data.format=chatt"], "Did you mean 'chat'"),
    ("unknown method", ["--set", "method.name=loar"], "Did you mean 'lora'"),
    ("knob of another method", ["--set", "method={name: ia3, r: 64}"], "ia3 has no such setting"),
    ("unknown key", ["--set", "train.epoch=2"], "Did you mean 'train.epochs'"),
    ("bad value", ["--set", "train.batch_size=many"], "train.batch_size"),
    ("override syntax", ["--set", "train.epochs"], "expected KEY=VALUE"),
]


@pytest.mark.parametrize("case,extra,fix", BAD_TRAIN_INPUTS, ids=[c[0] for c in BAD_TRAIN_INPUTS])
def test_bad_train_input_exits_2_naming_the_fix(
    case: str, extra: list[str], fix: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = _chat_file(tmp_path / "chat.jsonl")
    result = runner.invoke(
        app, ["train", "--data", str(data), "--set", f"model.name={tiny_model_dir}", *extra]
    )
    assert result.exit_code == 2, result.output
    assert fix in result.output
    assert "Traceback" not in result.output


def test_wrong_file_type_exits_2_naming_the_formats(tmp_path: Path, tiny_model_dir: Path) -> None:
    document = tmp_path / "notes.docx"
    document.write_bytes(b"PK\x03\x04 not a data file")
    result = runner.invoke(
        app, ["train", "--data", str(document), "--set", f"model.name={tiny_model_dir}"]
    )
    assert result.exit_code == 2, result.output
    assert "notes.docx" in result.output and "Traceback" not in result.output


def test_missing_config_file_and_missing_data(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "config file not found" in missing.output
    no_data = runner.invoke(app, ["train"])
    assert no_data.exit_code == 2 and "--data FILE" in no_data.output
    assert "Traceback" not in missing.output + no_data.output


def test_eval_and_chat_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    for command in (["eval", str(tmp_path)], ["generate", str(tmp_path), "-p", "hi"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "not a tunesmith run directory" in result.output
        assert "Traceback" not in result.output


def test_eval_without_test_items_names_the_fix(run_setup) -> None:
    config, workdir = run_setup  # its split has no test share
    out = workdir / "runs"
    trained = runner.invoke(app, ["train", str(config), "--set", f"output.dir={out}"])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["eval", str(out / "resume")])
    assert result.exit_code == 2, result.output
    assert "--test FILE" in result.output and "Traceback" not in result.output

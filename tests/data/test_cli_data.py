"""``tunesmith data check`` through the real Typer app, mounted the way the main CLI mounts it."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from tunesmith.cli_data import data_app

app = typer.Typer()
app.add_typer(data_app, name="data")
runner = CliRunner(env={"COLUMNS": "300"})


def test_clean_file_exits_zero_and_prints_the_tables(write, chat):
    path = write("data.jsonl", [chat(i) for i in range(60)])
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "Files read" in result.output
    assert "No problems found." in result.output


def test_errors_exit_two_with_locations_and_no_traceback(write_lines, chat):
    lines = [json.dumps(chat(i)) for i in range(20)]
    lines[6] = '{"messages": ['
    path = write_lines("data.jsonl", lines)
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{path}:7:15" in result.output
    assert "invalid_json" in result.output


def test_json_output_is_the_report(write, chat):
    path = write("data.jsonl", [chat(i) for i in range(30)])
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["rows_in"] == 30
    assert [p["code"] for p in report["problems"]] == ["too_few_examples"]


def test_column_mapping_and_format_options(write):
    rows = [
        {"sentence": f"review number {i} " + "w" * i, "y": "pos" if i % 2 else "neg"}
        for i in range(60)
    ]
    path = write("data.csv", rows)
    result = runner.invoke(
        app,
        ["data", "check", str(path), "--column", "text=sentence", "--column", "label=y", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["files"][0]["format"] == "classification"
    bad = runner.invoke(app, ["data", "check", str(path), "--format", "nonsense"])
    assert bad.exit_code == 2
    assert "not a format" in bad.output


def test_missing_file_is_reported_not_raised(tmp_path):
    result = runner.invoke(app, ["data", "check", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2
    assert "file_not_found" in result.output

"""`tunesmith monitor` end to end on a tiny run: verdicts, exit codes, outputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

from .conftest import write_jsonl

runner = CliRunner()


def monitor(*args: str):
    return runner.invoke(app, ["monitor", *args, "--draws", "200"])


@pytest.fixture(scope="module")
def sms_result(snips_run: Path, sms_log: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("monitor-out")
    return monitor(str(snips_run), str(sms_log), "--window", "40", "--out", str(out)), out


def test_other_domain_traffic_is_drift_with_exit_code_3(sms_result) -> None:
    result, out = sms_result
    assert result.exit_code == 3, result.output
    assert "DRIFT" in result.output
    report = json.loads((out / "result.json").read_text())
    assert report["verdict"] == "drift"
    assert report["windows_drifted"] == len(report["windows"]) == 2
    latest = report["windows"][-1]["signals"]
    by_name = {s["name"]: s for s in latest}
    assert by_name["embedding_mmd"]["drifted"] and by_name["domain_classifier_auc"]["drifted"]
    assert by_name["embedding_mmd"]["p_adjusted"] <= 0.05
    assert by_name["length_tokens"]["window_value"] > by_name["length_tokens"]["reference_value"]
    assert "predicted_labels" in by_name  # a classification run: labels are compared
    assert "perplexity" in by_name  # the run has weights and 25 validation prompts
    for signal in latest:
        assert signal["p_adjusted"] >= signal["p_value"]
        assert signal["detectable"] >= signal["null_mean"]


def test_to_label_holds_the_most_drifted_inputs_as_chat_records(sms_result) -> None:
    _, out = sms_result
    rows = [json.loads(line) for line in (out / "to_label.jsonl").read_text().splitlines()]
    assert 10 <= len(rows) <= 50
    assert rows[0]["messages"][0]["role"] == "user"
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "PlayMusic"}
    prompts = [r["messages"][0]["content"] for r in rows]
    assert len(set(prompts)) == len(prompts)


def test_held_out_requests_of_the_same_task_are_not_drift(
    snips_run: Path, held_out_log: Path, tmp_path: Path
) -> None:
    result = monitor(str(snips_run), str(held_out_log), "--window", "40", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["verdict"] == "no drift" and report["drifted_signals"] == []


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text


def test_an_empty_file_is_one_clear_error(snips_run: Path, tmp_path: Path) -> None:
    empty = tmp_path / "requests.jsonl"
    empty.write_text("")
    one_line_error(monitor(str(snips_run), str(empty)), "requests.jsonl", "empty")


def test_a_file_in_another_format_names_file_and_line(snips_run: Path, tmp_path: Path) -> None:
    other = write_jsonl(tmp_path / "other.jsonl", [{"query": "hi"}] * 30)
    one_line_error(monitor(str(snips_run), str(other)), "other.jsonl:1:")


def test_a_window_larger_than_the_input(snips_run: Path, held_out_log: Path) -> None:
    one_line_error(
        monitor(str(snips_run), str(held_out_log), "--window", "100"), "larger than the input"
    )


def test_a_run_without_training_data(tmp_path: Path, held_out_log: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {train: []}\n")
    one_line_error(monitor(str(run), str(held_out_log)), "no training data")
    one_line_error(monitor(str(tmp_path), str(held_out_log)), "not a tunesmith run directory")


def test_report_is_one_self_contained_page(sms_result) -> None:
    _, out = sms_result
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<title>tunesmith monitor: drift</title>" in page
    assert page.count("<svg") >= 2  # the timeline and the null plots
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert "embedding_mmd" in page and "Most drifted inputs" in page

"""`tunesmith retrain`: versions, pinned splits, the gate, the pointer, and leaks refused."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.data.formats import read_file
from tunesmith.data.load import prepare_configured_records
from tunesmith.evaluate.bootstrap import BootstrapInterval
from tunesmith.monitor.gate import SliceComparison, gate_decision
from tunesmith.monitor.retrain import family_and_version, next_version_name, record_row
from tunesmith.runs import read_run_config
from tunesmith.serve.pointer import read_pointer

from .conftest import sms_texts, snips_rows, write_jsonl

runner = CliRunner()


def test_versions_count_up_from_the_family_name(tmp_path: Path) -> None:
    assert family_and_version("snips") == ("snips", 1)
    assert family_and_version("snips-v12") == ("snips", 12)
    assert next_version_name(tmp_path, "snips") == "snips-v2"
    (tmp_path / "snips-v3").mkdir()
    (tmp_path / "other-v9").mkdir()
    assert next_version_name(tmp_path, "snips") == "snips-v4"
    assert next_version_name(tmp_path, "snips-v2") == "snips-v4"


def _comparison(name: str, low: float, high: float) -> SliceComparison:
    return SliceComparison(name, "accuracy", 50, 0.5, 0.5 + (low + high) / 2,
                           BootstrapInterval((low + high) / 2, low, high, 0.95, 2000))  # fmt: skip


def test_the_gate_needs_a_clear_gain_on_new_data_and_no_loss_past_the_margin() -> None:
    better, unclear = _comparison("new", 0.05, 0.2), _comparison("new", -0.01, 0.2)
    same, worse = _comparison("old", -0.015, 0.01), _comparison("old", -0.08, -0.01)
    assert gate_decision(better, same, 0.02).startswith("promoted")
    assert gate_decision(unclear, same, 0.02).startswith("kept")
    assert "may be worse than 0.02" in gate_decision(better, worse, 0.02)
    assert gate_decision(better, worse, 0.1).startswith("promoted")


def test_records_written_back_read_as_the_same_records(tmp_path: Path) -> None:
    rows = [
        {"text": "play jazz", "label": "PlayMusic"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a", "weight": 0},
                      {"role": "user", "content": "u2"}, {"role": "assistant", "content": "b"}]},
    ]  # fmt: skip
    first = read_file(write_jsonl(tmp_path / "a.jsonl", rows)).records
    second = read_file(write_jsonl(tmp_path / "b.jsonl", [record_row(r) for r in first])).records
    strip = [(r.messages, r.label) for r in first]
    assert strip == [(r.messages, r.label) for r in second]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("retrain")
    rows = [{"text": r["text"], "label": r["intent"]} for r in snips_rows()[:200]]
    write_jsonl(workdir / "snips.jsonl", rows)
    config = workdir / "run.yaml"
    config.write_text(textwrap.dedent(f"""
        model: {{name: "{tiny_model_dir}"}}
        data: {{train: snips.jsonl, split: [0.7, 0.1, 0.2], max_length: 64}}
        method: {{name: lora, r: 4, alpha: 8}}
        train: {{max_steps: 2, batch_size: 4, eval_every: 100, early_stopping_patience: null}}
        eval: {{enabled: false}}
        output: {{dir: "{workdir}", name: intents}}
    """))  # fmt: skip
    return api.train(load_config(config), show_progress=False).run_dir


def test_retrain_trains_v2_on_pinned_splits_gates_it_and_writes_the_pointer(
    champion: Path, tmp_path: Path
) -> None:
    added = write_jsonl(tmp_path / "labelled.jsonl",
                        [{"text": t, "label": "Other"} for t in sms_texts()[:40]])  # fmt: skip
    result = runner.invoke(app, ["retrain", str(champion), "--add", str(added)])
    assert result.exit_code == 0, result.output
    v2 = champion.parent / "intents-v2"
    assert (v2 / "final").is_dir()
    gate = json.loads((v2 / "gate.json").read_text())
    assert gate["old_test"]["n_items"] == 40 and gate["new_test"]["n_items"] == 10
    assert gate["old_test"]["metric"] == "accuracy"
    assert gate["decision"].startswith("promoted" if gate["promoted"] else "kept")
    old_test = read_file(v2 / "data" / "old_test.jsonl").records
    assert len(old_test) == 40  # the champion's own test split, pinned as a file
    pointer = champion.parent / "intents.promoted.json"
    assert read_pointer(pointer).resolve() == (v2 if gate["promoted"] else champion).resolve()

    again = runner.invoke(app, ["retrain", str(pointer), "--add", str(added), "--from", "continue"])
    assert again.exit_code == 0, again.output
    assert (champion.parent / "intents-v3" / "champion-merged").is_dir()


def test_new_rows_that_leak_into_the_old_test_split_are_refused(
    champion: Path, tmp_path: Path
) -> None:
    old_test = prepare_configured_records(read_run_config(champion).data).test
    leaking = [{"text": r.messages[0].content, "label": r.label} for r in old_test[:12]]
    added = write_jsonl(tmp_path / "leak.jsonl", leaking)
    versions = sorted(p.name for p in champion.parent.iterdir())
    result = runner.invoke(app, ["retrain", str(champion), "--add", str(added)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert re.search(r"leak\.jsonl:\d+: this new row is also in the champion's test split", text)
    assert "(11 more like it)" in text
    assert sorted(p.name for p in champion.parent.iterdir()) == versions  # nothing written

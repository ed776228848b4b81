"""`tunesmith train` says so when the carved splits are far from the fractions asked for."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from tunesmith.cli import app

TEMPLATE = "the farmer counts the loaves in the old red barn before the rain comes"


def chat(user: str, reply: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    }


def test_the_training_banner_warns_about_an_off_target_split(tmp_path: Path, tiny_model_dir):
    rows = [chat(f"q{i} w{i}a w{i}b", f"a{i}") for i in range(22)]
    rows += [chat(f"{TEMPLATE} copy {k}", "ok") for k in range(18)]  # one near-duplicate group
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: rows.jsonl, split: [0.4, 0.3, 0.3], max_length: 128}}
            method: {{name: lora, r: 4, alpha: 8}}
            train: {{max_steps: 1, batch_size: 4, eval_every: 1, early_stopping_patience: null}}
            eval: {{enabled: false}}
            output: {{dir: "{tmp_path / "runs"}", name: banner}}
            """
        )
    )
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "examples: 18 train, 12 validation" in output
    assert (
        "warning: the 40 records split from the training data are off the requested fractions: "
        "train 18 (45.0%, asked 40%), test 10 (25.0%, asked 30%)." in output
    )
    assert "too large for an evaluation split stayed in train (sizes 18" in output
    report = json.loads((tmp_path / "runs" / "banner" / "data_report.json").read_text())
    assert len(report["split_warnings"]) == 1
    assert report["split_warnings"][0] in " ".join(result.output.split())

"""`tunesmith plan` through the real CLI on the tiny model; the plan a run records."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tunesmith.cli import app

runner = CliRunner()


def _plan(config: Path, *extra: str):
    return runner.invoke(app, ["plan", str(config), *extra])


def test_plan_json_sums_its_components_and_counts_the_run_tokens(
    run_setup: tuple[Path, Path],
) -> None:
    config, _ = run_setup
    result = _plan(config, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    components = plan["memory_components"]
    assert plan["total_predicted_peak_bytes"] == sum(components.values())
    assert components["activations, logits, temporaries"] > 0
    assert plan["parameters"]["trainable_params"] > 0
    assert plan["trained_tokens"] == round(
        plan["workload"]["real_tokens_per_epoch"] * plan["workload"]["epochs"]
    )
    assert plan["fits"] is True
    assert plan["cost"]["api_dollars"] == 25.0 * plan["trained_tokens"] / 1e6


def test_plan_for_a_named_gpu_prices_its_hours(run_setup: tuple[Path, Path]) -> None:
    config, _ = run_setup
    result = _plan(config, "--json", "--device", "a100-80gb", "--price-per-hour", "2")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["precision"] == "bf16"
    assert plan["memory_limit_bytes"] == 80 * 1024**3
    assert "CUDA context (estimate)" in plan["memory_components"]
    assert plan["cost"]["machine_dollars"] == 2 * plan["time"]["seconds"] / 3600


def test_a_limit_below_the_peak_says_so_and_what_to_change(run_setup: tuple[Path, Path]) -> None:
    config, _ = run_setup
    result = _plan(config, "--memory-limit", "100MB", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "does NOT fit" in result.stdout
    assert "largest batch that fits: none" in result.stdout
    assert "try --set train.gradient_checkpointing=true" in result.stdout
    assert "try --set method.name=qlora" in result.stdout


def test_unknown_device_is_one_line_with_did_you_mean(run_setup: tuple[Path, Path]) -> None:
    config, _ = run_setup
    result = _plan(config, "--device", "h100-80")
    assert result.exit_code == 2
    assert "Did you mean 'h100-80gb'" in result.output
    assert "Traceback" not in result.output


def test_a_bad_memory_limit_is_one_line(run_setup: tuple[Path, Path]) -> None:
    config, _ = run_setup
    result = _plan(config, "--memory-limit", "plenty")
    assert result.exit_code == 2
    assert "expected a size such as 8GB" in result.output


def test_train_records_predicted_and_measured_peak(run_setup: tuple[Path, Path]) -> None:
    config, tmp = run_setup
    result = runner.invoke(app, ["train", str(config), "--no-eval",
                                 "--set", f"output.dir={tmp / 'runs'}"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "plan: peak" in result.output
    summary = json.loads((tmp / "runs" / "resume" / "summary.json").read_text())
    assert summary["peak_memory_source"] == "peak RSS"
    assert summary["measured_peak_bytes"] > 0
    assert summary["predicted_peak_bytes"] > 0
    assert summary["predicted_tokens_per_second"] > 0


def test_compare_columns_show_the_plan_error(tmp_path: Path) -> None:
    from tunesmith.cli import _plan_columns

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"predicted_peak_bytes": 1.1e9, "measured_peak_bytes": 1e9,
                                   "peak_memory_source": "peak RSS",
                                   "real_tokens_per_second": 250.4}))  # fmt: skip
    assert _plan_columns(summary) == ["1.10 GB", "1.00 GB peak RSS (+10%)", "250"]
    assert _plan_columns(tmp_path / "missing.json") == ["-", "-", "-"]


def test_calibration_times_real_steps(run_setup: tuple[Path, Path]) -> None:
    config, _ = run_setup
    result = _plan(config, "--json", "--device", "cpu", "--calibrate", "2")
    assert result.exit_code == 0, result.output
    timing = json.loads(result.stdout)["time"]
    assert timing["source"] == "calibrated on 2 steps"
    assert timing["tokens_per_second"] > 0 and timing["seconds_per_step"] > 0

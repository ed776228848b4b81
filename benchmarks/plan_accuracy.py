"""Does `tunesmith plan` predict what training really uses? Predicted vs measured on SmolLM2.

For each configuration (method x micro-batch x example length) the script writes uniform
synthetic chat data (every example the same token length, so the run's widest forward
pass occurs in its first steps), then:

1. `tunesmith plan --json --calibrate C` in its own process (the calibrated step time);
2. `tunesmith train` for S steps in its own process; its summary.json records the plan
   it made before the first step (predicted peak) and the peak it measured (peak RSS).

Printed: predicted vs measured peak memory and step time, and the error of each. The raw
figures go to --out (JSON), so `--report FILE` can re-print them without training.

    python benchmarks/plan_accuracy.py                       # 10 configurations (~30 min)
    python benchmarks/plan_accuracy.py --only lora-b8-l128   # one of them
    python benchmarks/plan_accuracy.py --report /tmp/plan_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [  # (method, micro-batch, example length in tokens)
    ("lora", 8, 128),
    ("lora", 2, 512),
    ("lora", 8, 512),
    ("qlora", 8, 128),
    ("qlora", 2, 512),
    ("full", 4, 128),
    ("full", 2, 512),
    ("ia3", 8, 256),
    ("prefix", 4, 128),
    ("lora-gc", 8, 512),
]


def name_of(method: str, batch: int, length: int) -> str:
    return f"{method}-b{batch}-l{length}"


def synthetic_rows(length: int, count: int) -> list[dict[str, object]]:
    """Chat examples of exactly ``length`` tokens under the bundled tokenizer."""
    from tunesmith.cli_data import load_tokenizer
    from tunesmith.config import load_config

    tokenizer = load_tokenizer(load_config())

    def tokens(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows, start = [], 0
    for index in range(count):
        words = [f"w{(index * 7 + i) % 97}" for i in range(max(0, start - 4))]
        messages = [{"role": "user", "content": " ".join(words)},
                    {"role": "assistant", "content": f"answer {index}"}]  # fmt: skip
        while tokens(messages) < length:  # at most a few tokens over: max_length has room
            words.append(f"w{(index * 7 + len(words)) % 97}")
            messages[0]["content"] = " ".join(words)
        start = len(words)
        rows.append({"messages": messages})
    return rows


def settings_for(method: str, batch: int, length: int, data: Path, out: Path) -> list[str]:
    real_method = method.removesuffix("-gc")
    return [
        "--data", str(data),
        "--set", f"method.name={real_method}",
        "--set", f"train.batch_size={batch}",
        "--set", f"data.max_length={length + 8}",
        "--set", "data.split=[0.95, 0.05, 0.0]",
        "--set", f"train.gradient_checkpointing={str(method.endswith('-gc')).lower()}",
        "--set", f"output.dir={out}",
    ]  # fmt: skip


def tunesmith(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tunesmith.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def measure(method: str, batch: int, length: int, steps: int, calibrate: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="plan-accuracy-") as scratch:
        data = Path(scratch) / "data.jsonl"
        rows = synthetic_rows(length, max(64, batch * (steps + 2) * 2))
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        common = settings_for(method, batch, length, data, Path(scratch) / "runs")
        plan = json.loads(
            tunesmith("plan", *common, "--json", "--calibrate", str(calibrate)).stdout
        )
        started = time.perf_counter()
        tunesmith("train", *common, "--no-eval", "--set", f"train.max_steps={steps}",
                  "--set", f"train.eval_every={10 * steps}")  # fmt: skip
        wall = time.perf_counter() - started
        summary = json.loads((Path(scratch) / "runs" / "data" / "summary.json").read_text())
        metrics = (Path(scratch) / "runs" / "data" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in metrics if '"tokens_per_s"' in line]
    elapsed = [r["tokens"] / r["tokens_per_s"] for r in records]
    step_seconds = (elapsed[-1] - elapsed[0]) / max(1, len(records) - 1)
    return {
        "config": name_of(method, batch, length),
        "predicted_peak_bytes": summary["predicted_peak_bytes"],
        "measured_peak_bytes": summary["measured_peak_bytes"],
        "plan_peak_bytes": plan["checked_peak_bytes"],
        "components": plan["memory_components"],
        "predicted_step_seconds": plan["time"]["seconds_per_step"],
        "uncalibrated_tokens_per_second": summary["predicted_tokens_per_second"],
        "calibrated_tokens_per_second": plan["time"]["tokens_per_second"],
        "measured_tokens_per_second": summary["real_tokens_per_second"],
        "measured_step_seconds": step_seconds,
        "train_wall_seconds": round(wall, 1),
    }


HEAP = "heap the allocator keeps (CPU)"
CHECKPOINT = "checkpoint written in memory (CPU)"


def current_prediction(row: dict) -> int:
    """The peak the plan predicts with the constants in devices.py and estimate.py now,
    from the recorded components (so a re-fitted heap factor or the checkpoint's share can
    be checked without training again)."""
    from tunesmith.plan.devices import CPU_HEAP_RETENTION
    from tunesmith.plan.estimate import ADAM_STATES

    derived = (HEAP, CHECKPOINT)
    parts = {k: v for k, v in row["components"].items() if k not in derived}
    working = parts["activations, logits, temporaries"]
    checkpoint = ADAM_STATES * parts["trainable weights"]
    return round(sum(parts.values()) + working * (CPU_HEAP_RETENTION - 1) + checkpoint)


def report(results: list[dict]) -> None:
    print(f"{'config':<16} {'pred peak':>9} {'measured':>9} {'error':>7}   "
          f"{'pred s/step':>11} {'measured':>9} {'error':>7}")  # fmt: skip
    memory_errors, time_errors = [], []
    for row in results:
        predicted = current_prediction(row)
        memory = predicted / row["measured_peak_bytes"] - 1
        timing = row["predicted_step_seconds"] / row["measured_step_seconds"] - 1
        memory_errors.append(abs(memory))
        time_errors.append(abs(timing))
        print(
            f"{row['config']:<16} {predicted / 1e9:>7.2f}GB "
            f"{row['measured_peak_bytes'] / 1e9:>7.2f}GB {100 * memory:>+6.1f}%   "
            f"{row['predicted_step_seconds']:>10.2f}s {row['measured_step_seconds']:>8.2f}s "
            f"{100 * timing:>+6.1f}%"
        )
    print(
        f"worst peak-memory error {100 * max(memory_errors):.1f}% (target 15%); worst "
        f"step-time error with calibration {100 * max(time_errors):.1f}% (target 20%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps per check")
    parser.add_argument("--calibrate", type=int, default=3, help="calibration steps of the plan")
    parser.add_argument("--only", action="append", help="run only these configurations")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plan_accuracy.json"))
    parser.add_argument("--report", type=Path, help="re-print saved results, train nothing")
    options = parser.parse_args()
    if options.report:
        report(json.loads(options.report.read_text()))
        return
    results = []
    for method, batch, length in CONFIGS:
        if options.only and name_of(method, batch, length) not in options.only:
            continue
        print(f"{name_of(method, batch, length)} ...", file=sys.stderr, flush=True)
        results.append(measure(method, batch, length, options.steps, options.calibrate))
        options.out.write_text(json.dumps(results, indent=2))
    report(results)


if __name__ == "__main__":
    main()

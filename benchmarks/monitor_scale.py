"""`tunesmith monitor` on a 100,000-line request log: wall time, inputs/s and peak memory.

    .venv/bin/python benchmarks/monitor_scale.py [--run DIR] [--inputs 100000]
        [--window 500] [--perplexity-sample 100] [--no-perplexity] [--json out.json]

The log is what `tunesmith serve --log-requests` writes (chat JSONL with the answer and a
timestamp per line), built from real texts in ../shared/data: Snips NLU *validate*
requests (700 the run never trained on, answered with their intent) and UCI SMS
messages (another domain, answered "PlayMusic", a wrong intent). Windows follow a fixed
pattern of SMS shares, so some drift and most do not: of every ten windows, seven hold
no SMS, one 25%, one 50%, one only SMS. Texts repeat across windows (700 and 5,574 of
them fill 100,000 lines) but never within one: a window is drawn without replacement,
because a window holding the same request several times is a different traffic (the
embedding signals see the copies) from the training inputs, which hold each once.
Each line is parsed into its own strings, as a real log's would be.

Without ``--run`` the run is trained here: examples/snips-intent-lora.yaml (the bundled
SmolLM2-135M-Instruct, LoRA) on the 2,100 Snips train requests, 80/10/10 split, for
``--train-steps`` steps without evaluation. The monitor needs the run's data, tokenizer
and (for perplexity) its weights; how well it learned does not matter for the cost.

The monitor runs as `tunesmith monitor` in a child process, so its peak resident memory
(ru_maxrss from wait4, the kernel's VmHWM of that process alone) is measured apart from
this script and from training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drift import DATA, sms, snips  # the same Snips and SMS texts as the drift benchmark

ROOT = Path(__file__).resolve().parents[1]
SMS_SHARE_BY_WINDOW = (0.0,) * 7 + (0.25, 0.5, 1.0)
"""SMS share of window i is SMS_SHARE_BY_WINDOW[i % 10]."""
CLI = "from tunesmith.cli import app; app()"


def log_line(prompt: str, answer: str, stamp: datetime) -> str:
    """One line as `tunesmith serve --log-requests` writes it."""
    record = {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "model": "snips", "answer": answer,
        "timestamp": stamp.isoformat(timespec="milliseconds"), "latency_s": 0.05,
        "prompt_tokens": len(prompt.split()), "completion_tokens": 3, "finish_reason": "stop",
    }  # fmt: skip
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_log(path: Path, total: int, window: int, seed: int) -> list[float]:
    """The request log; returns each window's SMS share (the ground truth)."""
    rng = random.Random(seed)
    same = list(dict.fromkeys(snips("validate")))  # the SMS collection repeats some texts
    other = list(dict.fromkeys(sms()))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    shares = []
    with path.open("w", encoding="utf-8") as stream:
        for first in range(0, total, window):
            size = min(window, total - first)
            share = SMS_SHARE_BY_WINDOW[(first // window) % len(SMS_SHARE_BY_WINDOW)]
            shares.append(share)
            k = round(share * size)
            rows = [(t, "PlayMusic") for t in rng.sample(other, k)] + rng.sample(same, size - k)
            rng.shuffle(rows)
            for offset, (text, answer) in enumerate(rows):
                stamp = start + timedelta(seconds=first + offset)
                stream.write(log_line(text, answer, stamp))
    return shares


def train_run(workdir: Path, steps: int) -> Path:
    data = workdir / "snips_train.jsonl"
    data.write_text(
        "".join(json.dumps({"text": t, "label": i}) + "\n" for t, i in snips("train")),
        encoding="utf-8",
    )
    command = [
        sys.executable, "-c", CLI, "train", str(ROOT / "examples" / "snips-intent-lora.yaml"),
        "--set", f"data.train=['{data}']", "--set", "data.test=null",
        "--set", f"train.max_steps={steps}", "--set", "train.eval_every=1000",
        "--set", f"output.dir='{workdir}'", "--set", "output.name=snips", "--no-eval",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT)
    return workdir / "snips"


def monitor(run: Path, log: Path, out: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in bytes, exit code) of `tunesmith monitor` in a child."""
    command = [sys.executable, "-c", CLI, "monitor", str(run), str(log), "--window",
               str(args.window), "--out", str(out)]  # fmt: skip
    if args.no_perplexity:
        command.append("--no-perplexity")
    else:
        command += ["--perplexity-sample", str(args.perplexity_sample)]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, child.returncode


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def summarise(result: dict, shares: list[float]) -> dict[str, object]:
    """Windows flagged at each SMS share (overall and by signal, after Holm), and how many
    prompts perplexity scored."""
    flagged: dict[str, list[bool]] = {}
    by_signal: dict[str, dict[str, int]] = {}
    for window, share in zip(result["windows"], shares, strict=False):
        if window["tested"]:
            flagged.setdefault(f"{share:.0%} SMS", []).append(window["drifted"])
            counts = by_signal.setdefault(f"{share:.0%} SMS", {})
            for signal in window["signals"]:
                counts[signal["name"]] = counts.get(signal["name"], 0) + signal["drifted"]
    scored = [w["perplexity_scored"] for w in result["windows"] if w["tested"]]
    return {
        "flagged": {k: f"{sum(v)}/{len(v)}" for k, v in flagged.items()},
        "flagged_by_signal": by_signal,
        "perplexity_scored_per_window": sorted(set(s for s in scored if s is not None)),
        "perplexity_scored_total": sum(s or 0 for s in scored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="A trained run (default: train).")
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--perplexity-sample", type=int, default=100)
    parser.add_argument("--no-perplexity", action="store_true")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (DATA / "snips_nlu").is_dir() or not (DATA / "sms_spam").is_dir():
        sys.exit(f"{DATA} lacks snips_nlu or sms_spam: this benchmark needs ../shared/data.")
    if args.window > 700:
        sys.exit(f"--window {args.window}: windows hold distinct Snips requests, of which there "
                 "are 700. Fix: pass --window 700 or less.")  # fmt: skip
    if args.run is not None and not (args.run / "config.yaml").is_file():
        sys.exit(f"--run {args.run}: not a run directory (no config.yaml). Fix: pass one.")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        run = args.run or train_run(workdir, args.train_steps)
        log = workdir / "requests.jsonl"
        shares = write_log(log, args.inputs, args.window, seed=0)
        out = workdir / "monitor"
        wall, peak, code = monitor(run, log, out, args)
        if code not in (0, 3):
            sys.exit(f"tunesmith monitor exited {code}")
        result = json.loads((out / "result.json").read_text(encoding="utf-8"))
        figures = {
            "inputs": args.inputs,
            "log_mb": round(log.stat().st_size / 1e6, 1),
            "window": args.window,
            "perplexity": not args.no_perplexity,
            "perplexity_sample": None if args.no_perplexity else args.perplexity_sample,
            "wall_s": round(wall, 1),
            "inputs_per_s": round(args.inputs / wall, 1),
            "peak_rss_mib": round(peak / 2**20),
            "verdict": result["verdict"],
            "signals": result["signals"],
            **summarise(result, shares),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
        }
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

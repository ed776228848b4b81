"""Per-process memory of full fine-tuning with whole model copies (ddp) and with FSDP shards.

Both strategies train SmolLM2-135M in full (fp32, AdamW) on the example support data with
2 processes under torchrun, the same steps and global batch, one after the other. Each
launcher runs inside its own Python process, whose RUSAGE_CHILDREN peak is the largest peak
of any rank. Weights, gradients and the two AdamW moments are ~16 bytes per parameter;
FSDP keeps 1/2 of them per process, so the gap approaches 1 GB at 135M parameters.

    python benchmarks/sharding.py              # 4 steps each
    python benchmarks/sharding.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "examples" / "support-full.yaml"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(strategy: str, steps: int, scratch: Path) -> dict[str, float]:
    """Run one 2-process training and report its largest rank's peak RSS and its speed."""
    command = [
        str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29611",
        "-m", "tunesmith.cli", "train", str(PRESET), "--no-eval",
        "--set", f"train.strategy={strategy}", "--set", f"train.max_steps={steps}",
        "--set", "train.batch_size=2", "--set", "train.gradient_accumulation=1",
        "--set", "train.eval_every=1000", "--set", f"output.dir={scratch}",
        "--set", f"output.name={strategy}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    wrapper = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:], capture_output=True).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True
    )
    peak_kb, code = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{strategy} run failed (exit {code}); run it by hand: {command}")
    summary = json.loads((scratch / strategy / "summary.json").read_text())
    return {
        "peak_rss_mb": int(peak_kb) / 1024,
        "tokens_per_s": summary["real_tokens_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for strategy in ("ddp", "fsdp"):
            print(f"training with train.strategy={strategy} ...", flush=True)
            results[strategy] = launch(strategy, args.steps, Path(scratch))
    ddp, fsdp = results["ddp"], results["fsdp"]
    print(f"\nfull fine-tuning of SmolLM2-135M, 2 processes, {args.steps} steps, fp32, CPU")
    print(f"{'':26}{'ddp':>10}{'fsdp':>10}{'ratio':>8}")
    for key, label in (("peak_rss_mb", "peak RSS per process (MB)"), ("tokens_per_s", "tokens/s")):
        print(f"{label:26}{ddp[key]:10.1f}{fsdp[key]:10.1f}{fsdp[key] / ddp[key]:8.2f}")


if __name__ == "__main__":
    main()

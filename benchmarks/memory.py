"""Memory and speed of each method on SmolLM2: frozen base-weight bytes, trainable share,
seconds per step and peak RSS of training.

Each method trains a few steps in its own process on the example support data (batch 4),
so each peak RSS is its own. The headline is QLoRA's base weights against LoRA's.

    python benchmarks/memory.py                    # lora and qlora, 3 steps each
    python benchmarks/memory.py --methods all      # every registered method
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "examples" / "support-lora.yaml"


def base_weight_bytes(model) -> int:
    """Bytes of every frozen parameter and buffer (4-bit weights count as their packed bytes)."""
    seen: set[int] = set()
    total = 0
    tensors = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
    for tensor in tensors:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
        quant_state = getattr(tensor, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "absmax", None) is not None:
            total += quant_state.absmax.numel() * quant_state.absmax.element_size()
    return total


def child(method: str, steps: int, out: Path) -> None:
    from tunesmith.api import train
    from tunesmith.config import load_config
    from tunesmith.methods import get_method
    from tunesmith.models import load_base_model

    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(
            PRESET,
            [
                f"method={{name: {method}}}",  # that method with its own defaults
                f"train.max_steps={steps}",
                "train.batch_size=4",
                "train.eval_every=1000",
                "eval.enabled=false",
                f"output.dir={scratch}",
            ],
        )
        summary = train(config, show_progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training only, so far
    trainable_share = summary.trainable / summary.total

    chosen = get_method(method)
    loaded = load_base_model("smollm2-135m-instruct", **chosen.base_load_options(config.method))
    weights = base_weight_bytes(chosen.attach(loaded.model, config.method))
    out.write_text(
        json.dumps(
            {
                "base_weight_mb": weights / 2**20,
                "peak_rss_mb": peak,
                "seconds_per_step": summary.seconds / steps,
                "trainable_percent": 100 * trainable_share,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default="lora,qlora", help="comma list, or 'all'")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.method:
        child(options.method, options.steps, options.out)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if options.methods == "all":
        from tunesmith.methods import METHODS

        methods = list(METHODS)
    else:
        methods = options.methods.split(",")
    results = {}
    for method in methods:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out = Path(handle.name)
        subprocess.run(
            [sys.executable, __file__, "--method", method, "--steps", str(options.steps),
             "--out", str(out)],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        results[method] = json.loads(out.read_text())
        out.unlink()
    print(f"SmolLM2-135M, {options.steps} training steps, batch 4, support data")
    print(f"{'method':10} {'trainable %':>12} {'s/step':>8} {'peak RSS MB':>12} {'base MB':>9}")
    for method, row in results.items():
        print(
            f"{method:10} {row['trainable_percent']:>12.3f} {row['seconds_per_step']:>8.1f} "
            f"{row['peak_rss_mb']:>12.0f} {row['base_weight_mb']:>9.0f}"
        )
    if "lora" in results and "qlora" in results:
        ratio = results["qlora"]["base_weight_mb"] / results["lora"]["base_weight_mb"]
        print(f"qlora base weights / lora base weights: {ratio:.2f}")


if __name__ == "__main__":
    main()

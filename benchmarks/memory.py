"""LoRA vs QLoRA on SmolLM2: bytes held by the frozen base weights, and peak RSS of training.

Each method trains a few steps in its own process on the example support data, so
each peak RSS is its own.

    python benchmarks/memory.py            # 3 steps each
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
    from tunesmith.config import load_config
    from tunesmith.methods import get_method
    from tunesmith.models import load_base_model
    from tunesmith.pipeline import train

    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(
            PRESET,
            [
                f"method.name={method}",
                f"train.max_steps={steps}",
                "train.batch_size=4",
                "train.eval_every=1000",
                "eval.enabled=false",
                f"output.dir={scratch}",
            ],
        )
        summary = train(config, show_progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training only, so far

    chosen = get_method(method)
    loaded = load_base_model("smollm2-135m-instruct", **chosen.base_load_options(config.method))
    weights = base_weight_bytes(chosen.attach(loaded.model, config.method))
    out.write_text(
        json.dumps(
            {
                "base_weight_mb": weights / 2**20,
                "peak_rss_mb": peak,
                "seconds_per_step": summary.seconds / steps,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.method:
        child(options.method, options.steps, options.out)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = {}
    for method in ("lora", "qlora"):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out = Path(handle.name)
        subprocess.run(
            [sys.executable, __file__, "--method", method, "--steps", str(options.steps),
             "--out", str(out)],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        results[method] = json.loads(out.read_text())
        out.unlink()
    lora, qlora = results["lora"], results["qlora"]
    print(f"SmolLM2-135M, {options.steps} training steps, batch 4, support data")
    print(f"{'':22} {'lora':>10} {'qlora':>10} {'qlora/lora':>11}")
    for label, key, fmt in (
        ("base weights (MB)", "base_weight_mb", "{:.0f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("seconds per step", "seconds_per_step", "{:.1f}"),
    ):
        ratio = qlora[key] / lora[key]
        print(f"{label:22} {fmt.format(lora[key]):>10} {fmt.format(qlora[key]):>10} {ratio:>11.2f}")


if __name__ == "__main__":
    main()

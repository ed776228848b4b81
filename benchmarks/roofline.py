"""How much of this CPU's matrix-product peak tunesmith's training reaches, and where the
rest goes.

Prints GEMM throughput in fp32 and bf16 (a 2048² product, best of 3), then for LoRA and
full fine-tuning of SmolLM2-135M-Instruct: real tokens/s at `train.precision: auto`, the
FLOPs each trained token costs (forward 2N; backward 2N for activation gradients, plus 2N
for weight gradients in full fine-tuning; N = parameters in the decoder's matmuls and the
head), the achieved share of the peak of the precision in effect, and a torch.profiler
table of the largest costs of one optimizer step.

    python benchmarks/roofline.py            # 2 steps each, 16 GSM8K examples (~3 min)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from tunesmith.models.precision import matmul_gflops, resolve_precision

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
MODEL = "smollm2-135m-instruct"


def write_examples(path: Path, count: int) -> None:
    lines = GSM8K.read_text(encoding="utf-8").splitlines()[:count]
    rows = [json.loads(line) for line in lines]
    path.write_text(
        "".join(
            json.dumps({"prompt": r["question"], "completion": r["answer"]}) + "\n" for r in rows
        )
    )


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that take part in a matmul per token: every Linear (the head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def train_once(method: str, data: Path, workdir: Path, steps: int, profile: bool) -> dict:
    from tunesmith import api
    from tunesmith.config import load_config

    config = load_config(
        None,
        [
            f"model.name={MODEL}", f"data.train=['{data}']", "data.split=[1.0, 0.0, 0.0]",
            "data.max_length=512", f"method.name={method}", "train.batch_size=8",
            f"train.max_steps={steps}", "eval.enabled=false", f"output.dir={workdir}",
            f"output.name={method}",
        ],
    )  # fmt: skip
    if not profile:
        summary = api.train(config, show_progress=False)
        return {"tokens_per_s": summary.real_tokens_per_second}
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profiler:
        api.train(config, show_progress=False)
    return {"table": profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--examples", type=int, default=16)
    options = parser.parse_args()
    peak = {"fp32": matmul_gflops(torch.float32, 2048), "bf16": matmul_gflops(torch.bfloat16, 2048)}
    print(f"GEMM 2048²: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    precision = resolve_precision("auto", torch.device("cpu"))
    print(f"train.precision auto: {precision.name} ({precision.reason})")
    from tunesmith.models import load_base_model

    parameters = matmul_parameters(load_base_model(MODEL).model)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "train.jsonl"
        write_examples(data, options.examples)
        for method, flops_per_token in (("lora", 4 * parameters), ("full", 6 * parameters)):
            measured = train_once(method, data, Path(scratch), options.steps, profile=False)
            achieved = flops_per_token * measured["tokens_per_s"] / 1e9
            share = achieved / peak[precision.name]
            print(
                f"{method:5} {measured['tokens_per_s']:8.1f} tokens/s x "
                f"{flops_per_token / 1e9:.2f} GFLOP/token = {achieved:6.1f} GFLOP/s, "
                f"{100 * share:.0f}% of the {precision.name} GEMM peak"
            )
        print("\nprofile of LoRA training (self CPU time):")
        print(train_once("lora", data, Path(scratch) / "profiled", 1, profile=True)["table"])


if __name__ == "__main__":
    main()

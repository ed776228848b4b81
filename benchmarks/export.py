"""The export quant table for the support demo run: each GGUF in llama.cpp against the
unquantized model in transformers, on the run's own held-out prompts and metric.

For every quant: file size, llama.cpp greedy tokens/s, the task metric and general-text
perplexity next to transformers', identical greedy replies, top-1 agreement, max |Δlogit|.
Then the adapter as a GGUF LoRA on the shipped Q4_1 base and on an F16 export of the base.

    python benchmarks/export.py                      # trains runs/demo-support-lora if absent
    python benchmarks/export.py --run RUN_DIR --items 20 --quants f16 q8_0 q4_k_m
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEMO_RUN = REPO / "runs" / "demo-support-lora"


def ensure_run(run: Path) -> Path:
    if (run / "final").is_dir():
        return run
    from tunesmith import api
    from tunesmith.config import load_config

    config = load_config(REPO / "examples" / "support-lora.yaml")
    config.output.dir = run.parent
    config.output.name = run.name
    config.eval.enabled = False
    return api.train(config, show_progress=True).run_dir


def _row(table: Table, name: str, size: int, v: dict) -> None:
    table.add_row(
        name,
        f"{size / 2**20:.1f}",
        f"{v['tokens_per_second']:.1f}",
        f"{v['metric_llama_cpp']:.3f}",
        f"{v['perplexity_llama_cpp']:.2f}",
        f"{v['replies_identical']}/{v['prompts']}",
        f"{v['top1_agreement']:.1%}",
        f"{v['max_abs_logit_delta']:.3g}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=DEMO_RUN)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    args = parser.parse_args()
    from tunesmith.export import export_run

    run = ensure_run(args.run)
    console = Console(width=150)
    models = export_run(run, "gguf", quant=args.quants, verify_items=args.items)
    lora = export_run(run, "gguf-lora", quant="f16", verify_items=args.items)
    first = models.artifacts[0].verification
    assert first is not None
    table = Table(
        title=f"{run.name}: {first['prompts']} held-out prompts, metric {first['metric']}"
    )
    for column in ("file", "MB", "tok/s", first["metric"], "ppl", "same reply", "top-1", "max|Δ|"):
        table.add_column(column, justify="right" if column != "file" else "left")
    table.add_row(
        "transformers fp32 (merged)",
        "",
        f"{first['transformers_tokens_per_second']:.1f}",
        f"{first['metric_transformers']:.3f}",
        f"{first['perplexity_transformers']:.2f}",
        "—",
        "—",
        "—",
    )
    for artifact in models.artifacts:
        _row(table, artifact.path.name, artifact.size, artifact.verification)
    adapter = next(a for a in lora.artifacts if a.role == "LoRA adapter")
    for artifact in lora.artifacts:
        if artifact.verification:
            base = Path(artifact.verification["base"])
            _row(table, f"LoRA on {base.name}", adapter.size, artifact.verification)
    console.print(table)
    for line in models.warnings + lora.warnings + lora.notes[:1]:
        console.print(line)


if __name__ == "__main__":
    main()

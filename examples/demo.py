"""`make demo`: fine-tune the bundled model on example data and show it learned something.

Trains LoRA on examples/support-lora.yaml, then answers three held-out requests
with the base model and the fine-tuned model side by side.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunesmith.api import train
from tunesmith.chat import reply
from tunesmith.config import load_config
from tunesmith.quiet import quiet_third_party
from tunesmith.runs import base_model_of, load_trained

ROOT = Path(__file__).resolve().parent
PRESET = ROOT / "support-lora.yaml"


def main() -> int:
    quiet_third_party()
    console = Console(soft_wrap=True)
    started = time.perf_counter()
    config = load_config(PRESET, sys.argv[1:])
    config.output.name = "demo-support-lora"
    console.rule("[bold]tunesmith demo: LoRA on SmolLM2-135M-Instruct, 1 epoch, CPU")
    summary = train(config, console=console)

    trained = load_trained(summary.run_dir)
    test_file = config.data.test[0]
    rows = [json.loads(line) for line in test_file.read_text().splitlines()[:3]]
    table = Table(title="Held-out requests: base vs fine-tuned", show_lines=True)
    table.add_column("request", max_width=30)
    table.add_column("base model", max_width=45)
    table.add_column("fine-tuned", max_width=45)
    for row in rows:
        prompt = row["messages"][:-1]
        with base_model_of(trained) as base:
            before = reply(base, trained.tokenizer, prompt, max_new_tokens=64)
        after = reply(trained.model, trained.tokenizer, prompt, max_new_tokens=64)
        table.add_row(prompt[-1]["content"], before, after)
    console.print(table)
    minutes = (time.perf_counter() - started) / 60
    console.print(
        f"validation loss: {summary.val_loss_before:.4f} before → {summary.val_loss_after:.4f} "
        f"after  |  training {summary.seconds:.0f} s at {summary.real_tokens_per_second:.0f} "
        f"tokens/s  |  demo total {minutes:.1f} min\n"
        f"run directory: {summary.run_dir}   try: tunesmith chat {summary.run_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

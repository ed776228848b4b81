"""tunesmith vs TRL SFTTrainer, side by side in one invocation.

Both fine-tune SmolLM2-135M-Instruct with LoRA r=16 on every linear layer, each at its
own default precision for this machine (tunesmith `auto`, TRL's SFTConfig default: bf16
where the CPU computes it natively) and each at fp32, on the same GSM8K examples
(question -> user, answer -> assistant, loss on the answer only), batch 8, max length
512, the same number of optimizer steps, the same learning rate and schedule. TRL keeps
its own defaults otherwise (no packing; it turns gradient checkpointing on). Each run
has its own process so its peak RSS is its own. Printed: the precision each run used,
real (non-padding) tokens/s, peak RSS (taken when training ends), the last training
losses each trainer logged, and the loss of every final adapter on the training examples
and on held-out ones, scored by the same code in fp32: the like-for-like check, since the
two trainers order and batch the data differently.

    python benchmarks/vs_trl.py                 # 64 examples, 8 steps, 4 runs (~10 min)
    python benchmarks/vs_trl.py --examples 256  # the issue's full setting
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
MODEL = "smollm2-135m-instruct"
SETTINGS = {
    "batch_size": 8,
    "max_length": 512,
    "learning_rate": 2e-4,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "heldout": 32,
}


def gsm8k_rows(count: int, offset: int = 0) -> list[dict[str, str]]:
    lines = GSM8K.read_text(encoding="utf-8").splitlines()[offset : offset + count]
    return [json.loads(line) for line in lines]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SIDES = ["tunesmith:auto", "tunesmith:fp32", "trl:default", "trl:fp32"]


def run_tunesmith(
    examples: int, workdir: Path, overrides: list[str], precision: str
) -> dict[str, float]:
    from tunesmith.api import train
    from tunesmith.config import load_config

    data = workdir / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": row["question"], "completion": row["answer"]}) + "\n"
            for row in gsm8k_rows(examples)
        )
    )
    heldout = workdir / "heldout.jsonl"
    heldout.write_text(
        "".join(
            json.dumps({"prompt": row["question"], "completion": row["answer"]}) + "\n"
            for row in gsm8k_rows(SETTINGS["heldout"], offset=examples)
        )
    )
    steps = examples // SETTINGS["batch_size"]
    config = load_config(
        None,
        [
            f"model.name={MODEL}",
            f"data.train=['{data}']",
            f"data.validation=['{heldout}']",
            "data.split=[1.0, 0.0, 0.0]",
            f"data.max_length={SETTINGS['max_length']}",
            f"method.r={SETTINGS['lora_r']}",
            f"method.alpha={SETTINGS['lora_alpha']}",
            f"method.dropout={SETTINGS['lora_dropout']}",
            f"train.batch_size={SETTINGS['batch_size']}",
            f"train.max_steps={steps}",
            f"train.learning_rate={SETTINGS['learning_rate']}",
            "train.warmup_ratio=0",
            f"train.eval_every={steps}",
            "train.early_stopping_patience=null",
            "eval.enabled=false",
            f"output.dir={workdir}",
            "output.name=tunesmith",
            f"train.precision={precision}",
            *overrides,
        ],
    )
    summary = train(config, show_progress=False)
    peak_rss = peak_rss_mb()
    lines = [json.loads(line) for line in (workdir / "tunesmith" / "metrics.jsonl").open()]
    losses = [line["train_loss"] for line in lines if "train_loss" in line]
    from peft import PeftModel

    from tunesmith.models import load_base_model

    written = (workdir / "tunesmith" / "config.yaml").read_text(encoding="utf-8")
    used = next(line.split(":")[1].strip() for line in written.splitlines() if "precision:" in line)
    loaded = load_base_model(MODEL)
    tuned = PeftModel.from_pretrained(loaded.model, summary.final_dir)
    return {
        "precision": used,
        "real_tokens_per_s": summary.real_tokens_per_second,
        "seconds": summary.seconds,
        "peak_rss_mb": peak_rss,
        "last_train_loss": sum(losses[-2:]) / len(losses[-2:]),
        **_scored_losses(tuned, loaded.tokenizer, examples),
    }


def run_trl(examples: int, workdir: Path, overrides: list[str], precision: str) -> dict[str, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models import load_base_model

    loaded = load_base_model(MODEL)

    def conversational(rows: list[dict[str, str]]) -> Dataset:
        return Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": row["question"]}],
                    "completion": [{"role": "assistant", "content": row["answer"]}],
                }
                for row in rows
            ]
        )

    steps = examples // SETTINGS["batch_size"]
    timing: dict[str, float] = {}
    real_tokens = {"count": 0}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timing["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            timing["end"] = time.perf_counter()

    args = SFTConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=SETTINGS["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=SETTINGS["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_length=SETTINGS["max_length"],
        packing=False,
        **({"bf16": False, "fp16": False} if precision == "fp32" else {}),
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=42,
    )
    trainer = SFTTrainer(
        model=loaded.model,
        args=args,
        train_dataset=conversational(gsm8k_rows(examples)),
        processing_class=loaded.tokenizer,
        peft_config=LoraConfig(
            r=SETTINGS["lora_r"],
            lora_alpha=SETTINGS["lora_alpha"],
            lora_dropout=SETTINGS["lora_dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[Clock()],
    )
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        real_tokens["count"] += (
            int(batch["attention_mask"].sum())
            if "attention_mask" in batch
            else int(batch["input_ids"].numel())
        )
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    peak_rss = peak_rss_mb()
    seconds = timing["end"] - timing["start"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "real_tokens_per_s": real_tokens["count"] / seconds,
        "seconds": seconds,
        "peak_rss_mb": peak_rss,
        "last_train_loss": sum(losses[-2:]) / len(losses[-2:]),
        **_scored_losses(trainer.model, loaded.tokenizer, examples),
        "gradient_checkpointing": args.gradient_checkpointing,
    }


def _scored_losses(model, tokenizer, examples: int) -> dict[str, float]:
    """Loss of a final adapter on the training and the held-out examples, scored the same
    way for both trainers (assistant tokens only, mean per token)."""
    return {
        "train_set_loss": _loss_on(model, tokenizer, gsm8k_rows(examples)),
        "heldout_loss": _loss_on(
            model, tokenizer, gsm8k_rows(SETTINGS["heldout"], offset=examples)
        ),
    }


def _loss_on(model, tokenizer, rows: list[dict[str, str]]) -> float:
    import torch

    from tunesmith.data.records import Conversation, Message, Source
    from tunesmith.engine.batches import BatchSettings
    from tunesmith.engine.loop import evaluate_loss
    from tunesmith.objectives import get_objective

    records = [
        Conversation(
            (Message("user", row["question"]), Message("assistant", row["answer"])),
            Source("scored", index + 1),
        )
        for index, row in enumerate(rows)
    ]
    objective = get_objective("sft")
    scored, _ = objective.tokenize(
        tokenizer, records, max_length=SETTINGS["max_length"], on_overlength="drop"
    )
    return evaluate_loss(
        model,
        objective,
        scored,
        batches=BatchSettings(
            pad_token_id=tokenizer.pad_token_id,
            pack=True,
            row_length=SETTINGS["max_length"],
            batch_size=SETTINGS["batch_size"],
            device=torch.device("cpu"),
        ),
    )


def child(side: str, examples: int, out: Path, overrides: list[str]) -> None:
    trainer, precision = side.split(":")
    with tempfile.TemporaryDirectory() as scratch:
        runner = run_tunesmith if trainer == "tunesmith" else run_trl
        out.write_text(json.dumps(runner(examples, Path(scratch), overrides, precision)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64, help="training examples (x8 = steps)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="tunesmith setting a.b=v"
    )
    parser.add_argument("--only", choices=SIDES, help="run one side only")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.side:
        child(options.side, options.examples, options.out, options.overrides)
        return

    results: dict[str, dict[str, float]] = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    sides = [options.only] if options.only else SIDES
    native, reason = native_bf16()
    if not native and not options.only:
        # TRL's default (bf16) would be emulated here (tens of times slower than fp32), so
        # its best setting on this machine is fp32; tunesmith's auto picks fp32 itself.
        print(f"this CPU does not compute bf16 natively ({reason}): TRL's default bf16 is "
              "not run, fp32 is both sides' own best here", flush=True)  # fmt: skip
        sides = ["tunesmith:auto", "trl:fp32"]
    for side in sides:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out = Path(handle.name)
        print(f"running {side} on {options.examples} GSM8K examples …", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--side", side, "--examples", str(options.examples),
             "--out", str(out), *(f"--set={item}" for item in options.overrides)],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        results[side] = json.loads(out.read_text())
        out.unlink()
        print(json.dumps(results[side]), flush=True)
    if options.only:
        return

    print_table(results, options.examples)


def native_bf16() -> tuple[bool, str]:
    """Whether `train.precision: auto` picks bf16 on this CPU, and tunesmith's reason."""
    import torch

    from tunesmith.models.precision import resolve_precision

    picked = resolve_precision("auto", torch.device("cpu"))
    return picked.compute == torch.bfloat16, picked.reason


def print_table(results: dict[str, dict[str, float]], examples: int) -> None:
    """Every run side by side; ratios are tunesmith auto over TRL's default (over TRL fp32
    where the default was not run: a CPU without native bf16)."""
    ours, theirs = results["tunesmith:auto"], results.get("trl:default", results["trl:fp32"])
    sides = [side for side in SIDES if side in results]
    print()
    print(f"SmolLM2-135M LoRA r=16 all-linear, {examples} GSM8K examples, batch 8, max length")
    print(
        f"512, {examples // 8} steps; TRL gradient checkpointing: "
        f"{theirs.get('gradient_checkpointing')}; held-out loss scored in fp32 for all"
    )
    rows = [
        ("precision used", "precision", "{}"),
        ("real tokens/s", "real_tokens_per_s", "{:.1f}"),
        ("train seconds", "seconds", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("last train loss", "last_train_loss", "{:.4f}"),
        ("train-set loss", "train_set_loss", "{:.4f}"),
        ("held-out loss", "heldout_loss", "{:.4f}"),
    ]
    print(f"{'':18}" + "".join(f"{side:>16}" for side in sides) + f"{'auto/TRL':>10}")
    for label, key, fmt in rows:
        cells = "".join(f"{fmt.format(results[side][key]):>16}" for side in sides)
        ratio = "" if key == "precision" else f"{ours[key] / theirs[key]:>10.2f}"
        print(f"{label:18}{cells}{ratio}")


if __name__ == "__main__":
    main()

"""Data-stage throughput on GSM8K train (7,473 examples) with the SmolLM2 tokenizer.

    .venv/bin/python benchmarks/data_prepare.py [--repeat 3]

Measures tunesmith's data stage cold (empty cache dir: render through the chat
template, tokenize, mask, store) and cached (fingerprint + load), split into
read+validate+split and render+tokenize, and compares the tokenization with a
peer doing the same work the way TRL's SFTTrainer prepares a prompt-completion
dataset (`datasets.Dataset.map` with `apply_chat_template` on the prompt and on
prompt+completion, then labels from the common prefix). It also checks that both
produce the same input ids and labels. Each timing is the best of ``--repeat``
runs, since the machine may be shared. TOKENIZERS_PARALLELISM defaults to false,
as in the tunesmith CLI; set it to true to let the fast tokenizer use threads.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunesmith.data.cache import tokenize_with_cache
from tunesmith.data.load import prepare_records
from tunesmith.data.records import Conversation
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.models.loading import resolve_model_path
from tunesmith.objectives import get_objective

GSM8K_TRAIN = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "train.jsonl"
)
MODEL = "smollm2-135m-instruct"
MAX_LENGTH = 1024


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest wall time of ``repeat`` runs, and the last run's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def trl_style_tokenize(tokenizer: Any, records: list[Conversation]) -> list[dict[str, list[int]]]:
    """What TRL's SFTTrainer does to a conversational prompt-completion dataset (trl 1.x
    `_prepare_dataset`): tokenize prompt and prompt+completion, mask the common prefix,
    build labels, truncate, drop fully masked rows; every step a `Dataset.map`."""
    import datasets
    from trl.data_utils import common_prefix_length

    datasets.disable_progress_bars()
    rows = [
        {
            "prompt": [{"role": m.role, "content": m.content} for m in r.messages[:-1]],
            "completion": [{"role": "assistant", "content": r.messages[-1].content}],
        }
        for r in records
    ]

    def tokenize(example: dict[str, Any]) -> dict[str, list[int]]:
        prompt = tokenizer.apply_chat_template(
            example["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(
            example["prompt"] + example["completion"], tokenize=True, return_dict=True
        )["input_ids"]
        prompt_length = common_prefix_length(prompt, full)
        mask = [0] * prompt_length + [1] * (len(full) - prompt_length)
        return {"input_ids": full, "completion_mask": mask}

    def build_labels(example: dict[str, Any]) -> dict[str, list[int]]:
        labels = [
            token if bit else IGNORE_INDEX
            for token, bit in zip(example["input_ids"], example["completion_mask"], strict=True)
        ]
        return {"labels": labels}

    def truncate(example: dict[str, Any]) -> dict[str, list[int]]:
        return {
            "input_ids": example["input_ids"][:MAX_LENGTH],
            "labels": example["labels"][:MAX_LENGTH],
        }

    dataset = datasets.Dataset.from_list(rows)
    dataset = dataset.map(tokenize, remove_columns=["prompt", "completion"])
    dataset = dataset.map(build_labels, remove_columns=["completion_mask"])
    dataset = dataset.map(truncate)
    dataset = dataset.filter(lambda example: any(x != IGNORE_INDEX for x in example["labels"]))
    return dataset.to_list()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="Runs per timing (best is kept).")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    print(f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}  cores={os.cpu_count()}")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    print(f"tokenizer load: {time.perf_counter() - start:.2f} s (not counted below)")
    objective = get_objective("sft")

    def read() -> Any:
        return prepare_records(
            [GSM8K_TRAIN],
            columns={"prompt": "question", "completion": "answer"},
            split=(1.0, 0.0, 0.0),
        )

    read_seconds, prepared = best_of(args.repeat, read)
    records = prepared.train
    n = len(records)

    def cold() -> Any:
        with tempfile.TemporaryDirectory() as empty:
            return tokenize_with_cache(
                objective,
                tokenizer,
                records,
                max_length=MAX_LENGTH,
                on_overlength="drop",
                cache_dir=Path(empty),
            )

    cold_seconds, cold_split = best_of(args.repeat, cold)
    with tempfile.TemporaryDirectory() as directory:

        def cached() -> Any:
            return tokenize_with_cache(
                objective,
                tokenizer,
                records,
                max_length=MAX_LENGTH,
                on_overlength="drop",
                cache_dir=Path(directory),
            )

        cached()  # fill the cache
        cached_seconds, cached_split = best_of(args.repeat, cached)
    assert not cold_split.cache_hit and cached_split.cache_hit
    assert cached_split.examples == cold_split.examples

    tokens = sum(len(e) for e in cold_split.examples)
    print(f"GSM8K train: {n} examples, {len(cold_split.examples)} kept, {tokens:,} tokens")
    print(f"read+validate+split      {read_seconds:6.2f} s  {n / read_seconds:8,.0f} examples/s")
    print(f"render+tokenize (cold)   {cold_seconds:6.2f} s  {n / cold_seconds:8,.0f} examples/s")
    print(
        f"load from cache          {cached_seconds:6.2f} s  {n / cached_seconds:8,.0f} examples/s"
    )
    cold_total, cached_total = read_seconds + cold_seconds, read_seconds + cached_seconds
    print(f"data stage, cold         {cold_total:6.2f} s  {n / cold_total:8,.0f} examples/s")
    print(f"data stage, cached       {cached_total:6.2f} s  {n / cached_total:8,.0f} examples/s")

    trl_seconds, trl_rows = best_of(args.repeat, lambda: trl_style_tokenize(tokenizer, records))
    print(f"TRL-style Dataset.map    {trl_seconds:6.2f} s  {n / trl_seconds:8,.0f} examples/s")
    print(
        f"tunesmith render+tokenize is {trl_seconds / cold_seconds:.1f}x TRL-style cold, "
        f"{trl_seconds / cached_seconds:.0f}x when cached"
    )
    same = len(trl_rows) == len(cold_split.examples) and all(
        row["input_ids"] == e.input_ids and row["labels"] == e.labels
        for row, e in zip(trl_rows, cold_split.examples, strict=True)
    )
    print(f"same input_ids and labels as TRL-style: {same}")


if __name__ == "__main__":
    main()

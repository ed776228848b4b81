"""Per-process training state of full fine-tuning with whole copies (ddp) and FSDP shards.

Both strategies train SmolLM2-135M in full (fp32, AdamW) with 2 processes under torchrun,
on the same batches of the example support data, through tunesmith's own loop pieces. After
the steps each process counts the bytes it holds of weights, gradients and optimizer state
(its local shards under FSDP): the memory that must fit on each GPU. Peak RSS is not the
measure here: on CPU the gathered checkpoint and the final save land in rank 0's RAM too.

    python benchmarks/sharding.py              # 3 steps per strategy
    python benchmarks/sharding.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "support_requests.train.jsonl"
TORCHRUN = Path(sys.executable).with_name("torchrun")
BATCH_PER_PROCESS = 2


def local_bytes(tensors) -> int:
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def worker(strategy: str, steps: int) -> None:
    import torch

    from tunesmith.data.load import prepare_records
    from tunesmith.engine.batches import BatchSettings
    from tunesmith.engine.loop import backward_window
    from tunesmith.engine.parallel import Processes, build_parallel
    from tunesmith.methods import get_method, method_settings
    from tunesmith.models import load_base_model
    from tunesmith.objectives import get_objective

    processes = Processes.join()
    torch.manual_seed(0)
    loaded = load_base_model("smollm2-135m-instruct")
    model = get_method("full").attach(loaded.model, method_settings("full"))
    objective = get_objective("sft")
    parallel = build_parallel(strategy, model, objective, processes, method="full")
    records = prepare_records([DATA], split=(1.0, 0.0, 0.0)).train
    examples, _ = objective.tokenize(
        loaded.tokenizer, records, max_length=256, on_overlength="drop"
    )
    parameters = [p for p in parallel.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    window = BATCH_PER_PROCESS * processes.world_size
    tokens, seconds = 0, 0.0
    for step in range(steps):
        group = examples[step * window : (step + 1) * window]
        mine = group[processes.rank :: processes.world_size]
        started = time.perf_counter()
        _, real, _ = backward_window(
            model, objective, [mine],
            window_tokens=sum(objective.units(e) for e in group),
            batches=BatchSettings(
                loaded.tokenizer.pad_token_id, pack=True, row_length=256,
                batch_size=BATCH_PER_PROCESS, device=torch.device("cpu"),
            ),
            parallel=parallel, filler=group[:1],
        )  # fmt: skip
        parallel.finish_gradients(parameters, torch.zeros((), dtype=torch.float64))
        optimizer.step()
        if step > 0:  # the first step pays one-time allocations
            seconds += time.perf_counter() - started
            tokens += real
        if step < steps - 1:
            optimizer.zero_grad(set_to_none=True)
    counts = {
        "weights_mb": local_bytes(parameters) / 2**20,
        "gradients_mb": local_bytes(p.grad for p in parameters if p.grad is not None) / 2**20,
        "optimizer_mb": local_bytes(
            value
            for state in optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        )
        / 2**20,
        "tokens_per_s": tokens / max(seconds, 1e-9),
    }
    gathered = processes.gather_to_first(counts)
    if processes.rank == 0:
        print("RESULT " + json.dumps(gathered), flush=True)


def launch(strategy: str, steps: int) -> list[dict[str, float]]:
    command = [
        str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29611", __file__,
        "--worker", strategy, "--steps", str(steps),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{strategy} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[0].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per strategy")
    parser.add_argument("--worker", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    results = {}
    for strategy in ("ddp", "fsdp"):
        print(f"training with train.strategy={strategy} ...", flush=True)
        results[strategy] = launch(strategy, args.steps)
    print(f"\nfull fine-tuning of SmolLM2-135M, 2 processes, {args.steps} steps, fp32, CPU")
    print(f"{'per process (rank 0 | rank 1)':32}{'ddp':>18}{'fsdp':>18}{'ratio':>7}")
    for key in ("weights_mb", "gradients_mb", "optimizer_mb", "tokens_per_s"):
        ddp, fsdp = results["ddp"], results["fsdp"]
        cells = [f"{r[0][key]:8.1f} |{r[1][key]:8.1f}" for r in (ddp, fsdp)]
        ratio = fsdp[0][key] / ddp[0][key] if ddp[0][key] else float("nan")
        print(f"{key:32}{cells[0]:>18}{cells[1]:>18}{ratio:7.2f}")


if __name__ == "__main__":
    main()

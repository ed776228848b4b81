"""How a plan reads: one line for the train banner, a breakdown for `tunesmith plan`."""

from __future__ import annotations

from tunesmith.plan.estimate import Plan


def size(value: float) -> str:
    """Bytes in GB or MB (powers of 1000), three significant figures."""
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f} GB"
    return f"{value / 1e6:.0f} MB"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def one_line(plan: Plan) -> str:
    """The plan in one line: peak memory against the limit, tokens, time and cost."""
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    money = f", ${plan.cost.machine_dollars:.2f} machine" if plan.cost.price_per_hour else ""
    return (
        f"plan: peak {size(plan.memory.total_bytes)} of {size(plan.limit_bytes)} ({verdict}), "
        f"{plan.trained_tokens:,} trained tokens, ~{duration(plan.time.seconds)} "
        f"at {plan.time.tokens_per_second:.0f} tokens/s{money} "
        f"(API ${plan.cost.api_dollars:.2f})"
    )


def breakdown(plan: Plan) -> list[str]:
    """The whole plan, a line each, for people (``--json`` is for scripts)."""
    p, w, t, c = plan.parameters, plan.workload, plan.time, plan.cost
    lines = [
        f"model {plan.model}  method {plan.method}  device {plan.device}  "
        f"precision {plan.precision}  gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}",
        f"parameters: {p.trainable_params:,} trainable of {p.total_params:,} "
        f"({100 * p.trainable_params / max(1, p.total_params):.2f}%), {p.layers} layers",
        "memory at the peak of a step:",
    ]
    width = max(len(name) for name in plan.memory.components)
    for name, value in plan.memory.components.items():
        lines.append(f"  {name:<{width}}  {size(value):>10}")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(
        f"  {'total':<{width}}  {size(plan.memory.total_bytes):>10}  {verdict} in "
        f"{size(plan.limit_bytes)} ({plan.limit_source})"
    )
    lines += [
        f"data: {w.examples} training examples, {w.real_tokens_per_epoch:,} tokens per epoch "
        f"({w.trained_tokens_per_epoch:,} carry loss), {w.pieces_per_epoch} forward passes; "
        f"widest pass {w.largest_piece_rows} x {w.largest_piece_width} tokens",
        f"run: {w.steps} optimizer steps, {w.epochs:g} epochs, "
        f"{plan.trained_tokens:,} trained tokens, {t.total_flops:.3g} FLOPs "
        f"({t.flops_per_token:.3g} per token)",
        f"time: ~{duration(t.seconds)} at {t.tokens_per_second:.0f} tokens/s ({t.source})",
        f"cost: ${c.machine_dollars:.2f} at ${c.price_per_hour:g}/hour; the same tokens "
        f"through a fine-tuning API at ${c.api_price_per_mtok:g}/M: ${c.api_dollars:.2f}",
    ]
    lines.append(_batch_line(plan))
    for suggestion in plan.suggestions:
        mark = "fits" if suggestion.fits else "still does not fit"
        lines.append(f"  try {suggestion.change}: {size(suggestion.total_bytes)} ({mark})")
    return lines


def _batch_line(plan: Plan) -> str:
    if plan.largest_batch is None:
        return "largest batch that fits: none (not even batch_size 1)"
    more = " or more (pieces bound the memory)" if plan.largest_batch_capped else ""
    return f"largest batch that fits: train.batch_size={plan.largest_batch}{more}"

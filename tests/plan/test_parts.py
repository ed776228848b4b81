"""The parts of a plan on tiny models: parameter bytes, the tensor counter, the probe's
extrapolation, the workload, the device table."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.conftest import build_tiny_model
from tunesmith.config import load_config
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.checkpoint import OPTIMIZER_FILE, save_checkpoint
from tunesmith.errors import TunesmithError
from tunesmith.methods import count_parameters, get_method
from tunesmith.models import Precision, resolve_precision
from tunesmith.objectives import build_objective
from tunesmith.plan.devices import UnknownDeviceError, lookup_device, parse_bytes
from tunesmith.plan.estimate import (
    DEQUANTIZED_HEAP,
    QUANTIZED_SOURCE,
    SHAPE_KERNELS,
    memory_plan,
)
from tunesmith.plan.flops import CountFlops
from tunesmith.plan.probe import ProbeResult, _measure, probe_step
from tunesmith.plan.tracker import LiveTensorBytes
from tunesmith.plan.weights import NF4_BYTES_PER_PARAM, parameter_memory
from tunesmith.plan.workload import describe_workload


def _config(layers: int = 2, vocab: int = 400) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True,
    )  # fmt: skip


def _sft(run):
    return build_objective(run.objective, model_loader=None, base_model=run.model.name)


@pytest.mark.parametrize("method", ["lora", "full", "ia3", "prefix", "freeze", "adapter"])
def test_meta_counts_equal_those_of_the_real_model(method: str) -> None:
    run = load_config(overrides=[f"method.name={method}"])
    planned = parameter_memory(run, _config(), _sft(run), weights_dtype=torch.float32)
    real = get_method(method).attach(build_tiny_model(400), run.method)
    assert (planned.trainable_params, planned.total_params) == count_parameters(real)
    assert planned.trainable_bytes == 4 * planned.trainable_params


def test_qlora_keeps_embeddings_and_head_unquantized() -> None:
    run = load_config(overrides=["method.name=qlora"])
    planned = parameter_memory(run, _config(vocab=4000), _sft(run), weights_dtype=torch.float32)
    embedding = 4000 * 32
    norms = 32 * (2 * 2 + 1)
    linear = 2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64)  # q,o + k,v + gate,up,down
    assert planned.frozen_bytes_by_dtype["fp32"] == 4 * (embedding + norms)
    assert planned.frozen_bytes_by_dtype["nf4"] == round(linear * NF4_BYTES_PER_PARAM)


def test_tracker_counts_live_storages_once_and_forgets_freed_ones() -> None:
    with LiveTensorBytes() as live:
        first = torch.ones(1000)  # 4000 bytes
        view = first[10:]  # same storage: not counted again
        second = torch.ones(500)
        assert live.current == 6000
        del second
        assert live.current == 4000
    assert live.peak == 6000
    assert view.untyped_storage().nbytes() == 4000


def _examples(lengths: list[int]) -> list[TokenizedExample]:
    return [
        TokenizedExample(
            list(range(4, 4 + n)), [-100] * (n // 2) + list(range(n - n // 2)), f"r{i}"
        )
        for i, n in enumerate(lengths)
    ]


def test_workload_counts_the_run_tokens_and_its_widest_piece() -> None:
    run = load_config(overrides=["train.batch_size=4", "train.max_tokens_per_forward=64"])
    batches = BatchSettings.of(run.train, pad_token_id=3, pack=True, row_length=64,
                               device=torch.device("cpu"))  # fmt: skip
    lengths = [20, 30, 40, 50, 60, 10, 15, 25]
    examples = _examples(lengths)
    work = describe_workload(examples, _sft(run), batches, run.train)
    assert work.real_tokens_per_epoch == sum(lengths)
    assert work.trained_tokens_per_epoch == sum(e.trained_tokens for e in examples) > 0
    assert work.largest_piece_slots <= 64
    assert work.slots_per_epoch >= sum(lengths)


def test_workload_counts_the_shapes_the_run_executes() -> None:
    """Padded batches of 2 without packing: each batch is as wide as its longest example,
    so the run meets one shape per distinct batch width, over every epoch it trains."""
    lengths = [20, 30, 40, 50, 60, 10, 15, 25]
    batches = BatchSettings.of(load_config().train, pad_token_id=3, pack=False,
                               row_length=64, device=torch.device("cpu"))  # fmt: skip

    def workload(*overrides: str):
        run = load_config(overrides=["train.batch_size=2", "train.epochs=1", *overrides])
        return describe_workload(_examples(lengths), _sft(run), batches, run.train)

    one_epoch = workload("train.gradient_accumulation=1")
    assert one_epoch.shapes == len({shape for shape in _batch_shapes(lengths, 2, epochs=1)})
    assert 1 < one_epoch.shapes <= 4
    sample_shapes = {tuple(sample.input_ids.shape) for sample in one_epoch.shape_samples}
    largest = (one_epoch.largest_piece_rows, one_epoch.largest_piece_width)
    assert len(sample_shapes) == len(one_epoch.shape_samples) == one_epoch.shapes - 1
    assert largest not in sample_shapes
    assert workload("train.max_steps=1", "train.gradient_accumulation=1").shapes == 1
    assert workload("train.epochs=3").shapes == len(_batch_shapes(lengths, 2, epochs=3))


def _batch_shapes(lengths: list[int], batch_size: int, epochs: int) -> set[tuple[int, int]]:
    from tunesmith.data.batching import epoch_order

    return {
        (len(group), max(lengths[i] for i in group))
        for epoch in range(epochs)
        for group in epoch_order(lengths, batch_size, load_config().train.seed, epoch)
    }


def test_new_shapes_cost_what_the_probe_measured_and_its_tail_beyond() -> None:
    """The curve is read at the run's count; past its end it goes on at the slope of its
    second half (a primitive cache that evicts grows slower once full)."""
    mb = 2**20
    probe = ProbeResult(10**6, 1, 1, shape_curve=(25 * mb, 50 * mb, 60 * mb, 65 * mb))
    cpu = lookup_device("cpu")
    parameters = parameter_memory(load_config(), _config(), _sft(load_config()),
                                  weights_dtype=torch.float32)  # fmt: skip
    one, three, nine = (memory_plan(parameters, probe, cpu, 0, 0, shapes=n) for n in (1, 3, 9))
    assert one.components[SHAPE_KERNELS] == 0
    assert three.total_bytes - one.total_bytes == three.components[SHAPE_KERNELS] == 50 * mb
    assert nine.components[SHAPE_KERNELS] == 65 * mb + 4 * round(7.5 * mb)
    assert probe.shape_probe_bytes == 65 * mb
    assert ProbeResult(1, 1, 1, shape_curve=(-mb,)).shape_kernel_bytes(2) == 0


def test_two_shallow_probes_extrapolate_to_the_measured_full_depth() -> None:
    """The probe's premise: what a step allocates grows by a fixed amount per layer."""
    run = load_config(overrides=["method.name=full", "train.max_tokens_per_forward=512"])
    batches = BatchSettings.of(run.train, pad_token_id=3, pack=True, row_length=128,
                               device=torch.device("cpu"))  # fmt: skip
    work = describe_workload(_examples([100, 90, 80, 70]), _sft(run), batches, run.train)
    precision = resolve_precision("fp32", torch.device("cpu"))
    cpu = torch.device("cpu")
    predicted = probe_step(
        run,
        _config(layers=6),
        _sft(run),
        work.largest_piece,
        precision=precision,
        device=cpu,
        slots=work.largest_piece_slots,
    )
    measured = _measure(run, _config(layers=6), _sft(run), work.largest_piece, precision, cpu)
    assert predicted.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.05)
    assert predicted.flops_per_pass * 3 == pytest.approx(measured.flops, rel=0.01)


def _probe_peaks(
    method: str, checkpointing: bool, layers: int, compute: torch.dtype = torch.float32
) -> tuple[int, int]:
    """(extrapolated, measured at full depth) peak bytes of a step over 4 x 120 tokens."""
    run = load_config(overrides=[
        f"method.name={method}", f"train.gradient_checkpointing={str(checkpointing).lower()}",
        "train.batch_size=4", "train.max_tokens_per_forward=1024",
    ])  # fmt: skip
    batches = BatchSettings.of(run.train, pad_token_id=3, pack=False, row_length=128,
                               device=torch.device("cpu"))  # fmt: skip
    work = describe_workload(_examples([120] * 4), _sft(run), batches, run.train)
    precision = Precision(torch.float32, compute, "the test's")
    cpu = torch.device("cpu")
    predicted = probe_step(
        run, _config(layers=layers), _sft(run), work.largest_piece,
        precision=precision, device=cpu, slots=work.largest_piece_slots,
    )  # fmt: skip
    measured = _measure(run, _config(layers=layers), _sft(run), work.largest_piece, precision, cpu)
    return predicted.peak_bytes, measured.peak_bytes


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_probe_keeps_only_layer_inputs(method: str) -> None:
    """Checkpointing frees each layer's activations after its recomputation: the probed
    peak must fall well below the one without it, and still extrapolate in depth. (The
    FLOP counter's module hooks once kept the recomputed tensors alive, and the plan said
    checkpointing *raised* the peak: lora-gc on SmolLM2 planned 2.5x its measured RSS.)"""
    layers = 8
    plain, plain_measured = _probe_peaks(method, False, layers)
    checkpointed, checkpointed_measured = _probe_peaks(method, True, layers)
    assert checkpointed == pytest.approx(checkpointed_measured, rel=0.05)
    assert plain == pytest.approx(plain_measured, rel=0.05)
    assert checkpointed < 0.6 * plain


def test_qlora_probe_runs_real_4bit_layers_and_counts_their_float_copies() -> None:
    """The QLoRA probe runs bitsandbytes' 4-bit layers, so the float weights they
    dequantize each pass are counted (a LoRA stand-in, the probe before, counted none: its
    peak equalled LoRA's exactly), and it still extrapolates in depth."""
    pytest.importorskip("bitsandbytes")
    lora, _ = _probe_peaks("lora", False, 4, torch.bfloat16)
    qlora, qlora_measured = _probe_peaks("qlora", False, 4, torch.bfloat16)
    assert qlora == pytest.approx(qlora_measured, rel=0.05)
    linear_fp32 = 4 * 4 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64)  # 4 layers' weights
    assert qlora - lora >= 0.5 * linear_fp32


def test_flop_count_equals_torch_flop_counter_without_its_module_hooks() -> None:
    model = build_tiny_model(400)
    tokens = torch.randint(0, 400, (2, 64))
    with FlopCounterMode(display=False) as reference:
        model(input_ids=tokens).logits.sum().backward()
    with CountFlops() as counted:
        model(input_ids=tokens).logits.sum().backward()
    assert counted.total == reference.get_total_flops() > 0


def test_cpu_plan_counts_the_checkpoint_file_serialized_in_memory(tmp_path) -> None:
    """A full fine-tuning run peaks on CPU while its checkpoint is written: the optimizer
    state is serialized into memory first. The plan's component is that file's size."""
    run = load_config(overrides=["method.name=full"])
    model = build_tiny_model(400)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.randint(0, 400, (2, 16))).logits.sum().backward()
    optimizer.step()
    path = save_checkpoint(
        tmp_path, 1, trainable_state=model.state_dict(), optimizer=optimizer,
        scheduler=None, train_state={},
    )  # fmt: skip
    parameters = parameter_memory(run, _config(), _sft(run), weights_dtype=torch.float32)
    probe = ProbeResult(peak_bytes=10**6, flops_per_pass=1, piece_slots=1)
    plan = memory_plan(parameters, probe, lookup_device("a100-80gb"), 0, 0)
    assert "checkpoint written in memory (CPU)" not in plan.components  # not in CUDA memory
    cpu = replace(lookup_device("a100-80gb"), kind="cpu")
    planned = memory_plan(parameters, probe, cpu, 0, 0).components
    written = (path / OPTIMIZER_FILE).stat().st_size
    # The file adds the step counters and per-tensor pickle records: ~6% of a 60k-parameter
    # model, nothing at real sizes.
    assert planned["checkpoint written in memory (CPU)"] == pytest.approx(written, rel=0.1)


def test_unknown_device_says_did_you_mean() -> None:
    with pytest.raises(UnknownDeviceError, match="Did you mean 'a100-80gb'"):
        lookup_device("a100-80g")
    assert lookup_device("T4-16GB").memory_bytes == 16 * 1024**3


def test_memory_sizes_parse_in_decimal_and_binary_units() -> None:
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("1.5GiB") == int(1.5 * 1024**3)
    assert parse_bytes("512 MB") == 512 * 10**6
    with pytest.raises(TunesmithError, match="--memory-limit"):
        parse_bytes("lots")


def _mapped_resident_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            inside = len(fields) > 5 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_qlora_load_keeps_the_pages_its_4bit_weights_were_read_from(tmp_path) -> None:
    """A 4-bit load reads every linear weight from the mapped checkpoint, and the tensors
    left unquantized keep the file mapped: the pages read stay resident. The plan's
    source-pages component is that resident part, and it counts the weights bitsandbytes
    really quantized, in the file's dtype."""
    bitsandbytes = pytest.importorskip("bitsandbytes")
    config = LlamaConfig(
        vocab_size=4000, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    run = load_config(overrides=["method.name=qlora"])
    planned = parameter_memory(run, config, _sft(run), weights_dtype=torch.float32)
    options = get_method("qlora").base_load_options(run.method)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, **options)
    quantized = [m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert planned.quantized_params == sum(m.in_features * m.out_features for m in quantized)
    assert {m.compute_dtype for m in quantized} == {torch.float32}
    components = memory_plan(planned, ProbeResult(0, 1, 1), replace(
        lookup_device("a100-80gb"), kind="cpu"), 0, 0).components  # fmt: skip
    # The embedding is mapped but not read yet (its pages count once used, as weights).
    resident = _mapped_resident_bytes(tmp_path / "model.safetensors")
    assert resident == pytest.approx(components[QUANTIZED_SOURCE], rel=0.1)
    assert components[DEQUANTIZED_HEAP] == 4 * planned.quantized_params


def test_steps_under_bf16_autocast_fill_the_heap_the_4bit_load_left() -> None:
    """fp32 steps leave the float copies' heap on top (an AVX2 machine); steps under
    bf16 autocast fill it (an AVX512-BF16 machine: QLoRA's steps grew RSS 476 MB less
    than LoRA's for the same working set), so it is counted once, by the steps."""
    run = load_config(overrides=["method.name=qlora"])
    planned = parameter_memory(run, _config(), _sft(run), weights_dtype=torch.float32)
    cpu = replace(lookup_device("a100-80gb"), kind="cpu")
    fp32, bf16 = (memory_plan(planned, ProbeResult(0, 1, 1), cpu, 0, 0, compute_dtype=dtype)
                  for dtype in (torch.float32, torch.bfloat16))  # fmt: skip
    assert fp32.components[DEQUANTIZED_HEAP] == 4 * planned.quantized_params > 0
    assert bf16.components[DEQUANTIZED_HEAP] == 0
    assert fp32.total_bytes - bf16.total_bytes == 4 * planned.quantized_params


def test_only_a_4bit_plan_has_quantized_weights_components() -> None:
    run = load_config(overrides=["method.name=lora"])
    parameters = parameter_memory(run, _config(), _sft(run), weights_dtype=torch.float32)
    cpu = replace(lookup_device("a100-80gb"), kind="cpu")
    components = memory_plan(parameters, ProbeResult(0, 1, 1), cpu, 0, 0).components
    assert parameters.quantized_params == 0
    assert QUANTIZED_SOURCE not in components and DEQUANTIZED_HEAP not in components

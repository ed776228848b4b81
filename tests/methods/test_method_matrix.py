"""Every registered method, on the tiny LLaMA: it trains, freezes the rest, saves, reloads, merges.

The matrix is parametrised from `METHODS`, so a newly registered method is
included automatically and fails until it has a row in `CASES` with its exact
trainable-parameter count. Extra rows cover settings that change behaviour
(a linear adapter merges; freeze tuning with the head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bitsandbytes
import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from tunesmith.data.records import Source
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.methods import (
    METHODS,
    MethodError,
    MethodSettings,
    count_parameters,
    get_method,
    method_settings,
)
from tunesmith.objectives import get_objective

TRAIN_STEPS = 20
TRAIN_LEARNING_RATE = 3e-2
PAD_TOKEN_ID = 3  # the tiny tokenizer's <pad>
TINY_TOTAL_PARAMETERS = 31_392  # vocab 400 x hidden 32 (tied) + 2 blocks of 9_280 + norm 32


@dataclass(frozen=True)
class Case:
    """One row of the matrix: a method with settings, and what it must do on the tiny model."""

    method: str
    trainable: int
    merges: bool
    artifact: Literal["peft", "model", "tunesmith"]
    settings: dict[str, object] = field(default_factory=dict)
    base: Literal["tiny", "tiny64"] = "tiny"
    # Loaded by peft/transformers alone vs the in-memory model. Looser for qlora: without
    # tunesmith's load, bitsandbytes runs 4-bit layers through a bf16 kernel at inference on
    # AVX512-BF16 CPUs (~1e-2 on logits), where tunesmith keeps the float32 path.
    plain_load_atol: float = 1e-5


# Tiny LLaMA: hidden 32, MLP 64, 2 blocks, 4 heads of 8, 2 key/value heads, vocab 400.
CASES: dict[str, Case] = {
    "full": Case("full", TINY_TOTAL_PARAMETERS, merges=True, artifact="model"),
    # r=16 on q,o (32->32), k,v (32->16), gate,up (32->64), down (64->32): 8_192 per block.
    "lora": Case("lora", 16_384, merges=True, artifact="peft"),
    # LoRA + one magnitude per output row of each adapted layer (256 per block).
    "dora": Case("dora", 16_896, merges=True, artifact="peft"),
    # The same LoRA on a 4-bit base with hidden 64, MLP 128, key/value width 32: 16_384 per
    # block. Hidden 64 because bitsandbytes' CPU 4-bit inference kernel, which plain peft
    # loading uses, needs output widths divisible by 32.
    "qlora": Case(
        "qlora", 32_768, merges=True, artifact="peft", base="tiny64", plain_load_atol=3e-2
    ),
    # 20 virtual tokens x 2 blocks x (key + value) x 16 key/value width.
    "prefix": Case("prefix", 1_280, merges=False, artifact="peft"),
    # 20 virtual tokens x hidden 32.
    "prompt": Case("prompt", 640, merges=False, artifact="peft"),
    # k (16) + v (16) + down_proj input (64) per block.
    "ia3": Case("ia3", 192, merges=True, artifact="peft"),
    # 2 adapters per block, each down 32x64 + up 64x32.
    "adapter": Case("adapter", 16_384, merges=False, artifact="tunesmith"),
    "adapter-linear": Case(
        "adapter",
        16_384,
        merges=True,
        artifact="tunesmith",
        settings={"adapter_activation": "linear"},
    ),
    # The last block: attention 3_072 + MLP 6_144 + 2 norms of 32.
    "freeze": Case(
        "freeze", 9_280, merges=True, artifact="model", settings={"trainable_layers": 1}
    ),
    # ... plus the tied embedding/head (12_800) and the final norm (32).
    "freeze-head": Case(
        "freeze",
        22_112,
        merges=True,
        artifact="model",
        settings={"trainable_layers": 1, "train_head": True},
    ),
}

CASE_NAMES = sorted(set(METHODS) | set(CASES))


@dataclass
class TrainedCase:
    case: Case
    settings: MethodSettings
    model: nn.Module
    losses: list[float]
    before: dict[str, torch.Tensor]
    artifact_dir: Path


SFT = get_objective("sft")


def tunesmith_batch(encoded: dict[str, torch.Tensor], *, pack: bool):
    """The HF-style padded batch as tunesmith examples, collated as a training run does."""
    examples = []
    for row, (ids, mask, labels) in enumerate(
        zip(encoded["input_ids"], encoded["attention_mask"], encoded["labels"], strict=True)
    ):
        keep = mask.bool()
        examples.append(
            TokenizedExample(
                ids[keep].tolist(), labels[keep].tolist(), Source("memorisable", row + 1)
            )
        )
    return SFT.collate(examples, pad_token_id=PAD_TOKEN_ID, pack=pack, row_length=256)


def case_for(name: str) -> Case:
    if name not in CASES:
        pytest.fail(f"method {name!r} is registered but has no row in CASES; add one.")
    return CASES[name]


def load_base(base_dirs: dict[str, Path], case: Case, settings: MethodSettings) -> PreTrainedModel:
    options = get_method(settings.name).base_load_options(settings)
    return AutoModelForCausalLM.from_pretrained(base_dirs[case.base], **options).eval()


@pytest.fixture(scope="module")
def base_dirs(pretrained_tiny_dir: Path, pretrained_tiny64_dir: Path) -> dict[str, Path]:
    return {"tiny": pretrained_tiny_dir, "tiny64": pretrained_tiny64_dir}


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def trained(
    base_dirs: dict[str, Path],
    memorisable_batch: dict[str, torch.Tensor],
    tmp_path_factory: pytest.TempPathFactory,
):
    """Train each case once per module (attach, a plain AdamW loop, save) and share the result."""
    cache: dict[str, TrainedCase] = {}

    def train(name: str) -> TrainedCase:
        if name in cache:
            return cache[name]
        case = case_for(name)
        settings = method_settings(name=case.method, **case.settings)
        method = get_method(case.method)
        torch.manual_seed(0)
        model = method.attach(load_base(base_dirs, case, settings), settings)
        before = {n: p.data.clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=TRAIN_LEARNING_RATE,
            weight_decay=0.0,
        )
        model.train()
        losses = []
        # Through tunesmith's own batching and loss (packed where the method packs), as a run.
        batch = tunesmith_batch(memorisable_batch, pack=method.packs)
        for _ in range(TRAIN_STEPS):
            loss_sum, units = SFT.loss_sum(model, batch)
            loss = loss_sum / units
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        model.eval()
        artifact_dir = tmp_path_factory.mktemp(f"artifact-{name}")
        method.save(model, artifact_dir)
        cache[name] = TrainedCase(case, settings, model, losses, before, artifact_dir)
        return cache[name]

    return train


def test_every_registered_method_has_a_row() -> None:
    covered = {case.method for case in CASES.values()}
    assert set(METHODS) <= covered, f"methods without a CASES row: {set(METHODS) - covered}"
    for name, method in METHODS.items():
        assert CASES[name].merges == method.mergeable, f"{name}: default row vs mergeable"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_loss_is_finite_and_falls(name: str, trained) -> None:
    losses = trained(name).losses
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_trainable_parameter_count_is_pinned(name: str, trained) -> None:
    result = trained(name)
    counted = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    assert counted == result.case.trainable
    trainable, total = count_parameters(result.model)
    assert trainable == result.case.trainable
    assert total >= TINY_TOTAL_PARAMETERS


@pytest.mark.parametrize("name", CASE_NAMES)
def test_frozen_parameters_unchanged_trainable_ones_moved(name: str, trained) -> None:
    result = trained(name)
    for parameter_name, parameter in result.model.named_parameters():
        unchanged = torch.equal(result.before[parameter_name], parameter.data)
        if parameter.requires_grad:
            assert not unchanged, f"{name}: trainable {parameter_name} did not move"
        else:
            assert unchanged, f"{name}: frozen {parameter_name} changed"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_save_then_load_on_fresh_base_gives_identical_logits(
    name: str, trained, base_dirs: dict[str, Path], memorisable_batch: dict[str, torch.Tensor]
) -> None:
    result = trained(name)
    method = get_method(result.case.method)
    loaded = method.load(load_base(base_dirs, result.case, result.settings), result.artifact_dir)
    expected = logits_of(result.model, memorisable_batch)
    atol = result.case.plain_load_atol
    torch.testing.assert_close(logits_of(loaded, memorisable_batch), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_merge_matches_adapted_model_and_loads_in_plain_transformers(
    name: str,
    trained,
    base_dirs: dict[str, Path],
    memorisable_batch: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    result = trained(name)
    method = get_method(result.case.method)
    reloaded = method.load(load_base(base_dirs, result.case, result.settings), result.artifact_dir)
    if not result.case.merges:
        with pytest.raises(MethodError, match="cannot be merged"):
            method.merge(reloaded)
        return
    merged = method.merge(reloaded)
    assert isinstance(merged, PreTrainedModel) and not isinstance(merged, PeftModel)
    merged_logits = logits_of(merged, memorisable_batch)
    expected = logits_of(result.model, memorisable_batch)
    torch.testing.assert_close(merged_logits, expected, atol=1e-4, rtol=0)
    merged.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any(isinstance(m, bitsandbytes.nn.Linear4bit) for m in plain.modules())
    torch.testing.assert_close(
        logits_of(plain, memorisable_batch), merged_logits, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", CASE_NAMES)
def test_artifact_is_in_the_promised_format(
    name: str, trained, base_dirs: dict[str, Path], memorisable_batch: dict[str, torch.Tensor]
) -> None:
    result = trained(name)
    files = {path.name for path in result.artifact_dir.iterdir()}
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pkl"))}
    expected = logits_of(result.model, memorisable_batch)
    if result.case.artifact == "peft":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        base = load_base(base_dirs, result.case, result.settings)
        loaded = PeftModel.from_pretrained(base, result.artifact_dir)
    elif result.case.artifact == "model":
        assert {"config.json", "model.safetensors"} <= files
        loaded = AutoModelForCausalLM.from_pretrained(result.artifact_dir)
    else:
        assert files == {"tunesmith_adapter.json", "adapter_model.safetensors"}
        return
    atol = result.case.plain_load_atol
    torch.testing.assert_close(logits_of(loaded, memorisable_batch), expected, atol=atol, rtol=0)

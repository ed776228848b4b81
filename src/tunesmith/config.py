"""The run configuration: defaults, then a YAML file, then ``--set a.b=value`` overrides.

Every knob of a run lives here with its help text next to it. Unknown keys are
errors with a did-you-mean, so a typo never silently falls back to a default.
The resolved config (every default written out) is saved into the run directory.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunesmith.data.formats import FORMATS
from tunesmith.errors import TunesmithError
from tunesmith.methods import DEFAULT_METHOD, METHODS, get_method
from tunesmith.objectives import DEFAULT_OBJECTIVE, OBJECTIVES

DEFAULT_MODEL = "smollm2-135m-instruct"


def _union_on_name(settings: list[type[BaseModel]]) -> Any:
    """The registered settings models as one pydantic union, told apart by ``name``."""
    return Annotated[Union[tuple(settings)], Field(discriminator="name")]  # noqa: UP007


MethodSettingsUnion = _union_on_name([m.settings for m in METHODS.values()])
ObjectiveSettingsUnion = _union_on_name([o.settings for o in OBJECTIVES.values()])


class ConfigError(TunesmithError):
    """A config the user must fix; the message names the key, the allowed values and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field(
        DEFAULT_MODEL,
        description="Base model: 'smollm2-135m-instruct' (bundled, offline) or a local "
        "Hugging Face model dir.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where converted models are cached (default ~/.cache/tunesmith/models, "
        "or $TUNESMITH_CACHE).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with a model dir. Enable only for code you trust.",
    )


class DataConfig(_Section):
    train: list[Path] = Field(
        default_factory=list, description="Training files (JSONL, JSON, CSV/TSV, Parquet)."
    )
    validation: list[Path] | None = Field(
        None, description="Validation files; carved from train when absent."
    )
    test: list[Path] | None = Field(
        None, description="Held-out test files; carved from train when absent."
    )
    format: Literal["auto", *FORMATS] = Field(  # type: ignore[valid-type]
        "auto", description="Input format, or 'auto' to detect from the records' keys."
    )
    split: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/validation/test fractions when splits are carved."
    )
    seed: int = Field(42, description="Seed of the split (independent of the training seed).")
    dedup: bool = Field(False, description="Drop exact duplicates (each dropped one is reported).")
    max_length: int = Field(1024, ge=16, description="Maximum tokens per example.")
    on_overlength: Literal["drop", "truncate_prompt", "error"] = Field(
        "drop",
        description="Examples longer than max_length: drop (counted), cut the oldest prompt "
        "turns, or stop. The final assistant reply is never cut.",
    )

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _one_path_is_a_list_of_one(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(value) - 1.0) > 1e-6 or min(value) < 0:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {list(value)}")
        return value


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps; overrides epochs when set."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch (per process).")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak LR; default per method (LoRA 2e-4, full 1e-5)."
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="LR decay after warmup."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_every: int = Field(20, ge=1, description="Optimizer steps between validation passes.")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after this many evals without improvement; null: never."
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="Smallest validation-loss drop that counts as improvement."
    )
    save_every: int | None = Field(
        None, ge=1, description="Optimizer steps between checkpoints; default: at each eval."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept (plus the best).")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Trackers to send metrics to; none by default (nothing imported or sent).",
    )
    max_nonfinite_steps: int = Field(
        3, ge=1, description="Stop after this many NaN/Inf steps in a row (each is skipped)."
    )
    log_every: int = Field(1, ge=1, description="Optimizer steps between metrics.jsonl lines.")
    seed: int = Field(42, description="Seed of weights init, data order and dropout.")
    packing: bool = Field(
        True, description="Pack several examples per row, no attention across them."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    max_tokens_per_forward: int = Field(
        512,
        ge=64,
        description="Rows of a micro-batch go through the model in pieces of at most this many "
        "tokens: same gradients, activation memory bounded by this instead of the batch.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on CUDA with bf16 support; on CPU bf16 autocast where the CPU "
        "computes bf16 natively (AVX512-BF16, AMX, Arm BF16; weights and optimizer stay fp32), "
        "else fp32. The run's config.yaml records the choice.",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With several processes: ddp keeps a whole model in each; fsdp shards "
        "weights, gradients and optimizer state across them (FSDP2).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per process; default: the cores this process may use divided "
        "by the processes on this machine (OMP_NUM_THREADS, when set, wins).",
    )


class EvalConfig(_Section):
    enabled: bool = Field(True, description="Evaluate on the test split after training.")
    metrics: list[str] | None = Field(
        None, description="Metric names; chosen from the data if unset."
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        from tunesmith.evaluate.metrics import check_metric_names

        check_metric_names(names)  # an UnknownMetricError is a ValueError: pydantic reports it
        return names

    k_shot: int = Field(3, ge=0, description="Training examples in the few-shot baseline prompt.")
    max_new_tokens: int = Field(128, ge=1, description="Generation length limit.")
    max_items: int | None = Field(200, ge=1, description="Cap on test items evaluated.")
    forgetting_text: Path | None = Field(
        None, description="General text for the forgetting check (default: bundled wikitext)."
    )
    forgetting_threshold: float = Field(
        0.10, ge=0, description="Flag forgetting when perplexity rises by more than this share."
    )


class OutputConfig(_Section):
    dir: Path = Field(Path("runs"), description="Parent directory of run directories.")
    name: str | None = Field(
        None,
        description="Run name; defaults to the config file's stem or the data file's. One "
        "folder name: no '/', '\\', '..' or absolute path, so a run stays inside output.dir.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, value: str | None) -> str | None:
        """A name that climbs out of ``output.dir`` would let checkpoint rotation delete
        another run's ``step-*`` folders, so only a plain folder name is accepted."""
        if value is None:
            return value
        if (
            not value.strip()
            or value in (".", "..")
            or "/" in value
            or "\\" in value
            or ".." in value
            or Path(value).is_absolute()
        ):
            raise ValueError(
                "must be one folder name inside output.dir (no '/', '\\', '..' or absolute "
                "path); put the parent folder in output.dir instead"
            )
        return value


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodSettingsUnion = Field(
        default_factory=lambda: get_method(DEFAULT_METHOD).settings(),
        description="How the base model is adapted: `name` picks the method, the other keys "
        "are that method's settings (docs/methods.md).",
    )
    objective: ObjectiveSettingsUnion = Field(
        default_factory=lambda: OBJECTIVES[DEFAULT_OBJECTIVE].settings(),
        description="What the loss rewards: `name` picks the objective, the other keys are "
        "its settings (docs/objectives.md).",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, raw: object) -> object:
        """`method: {r: 8}` means the default method with r=8: fill in the name."""
        if isinstance(raw, dict):
            for section, default in (("method", DEFAULT_METHOD), ("objective", DEFAULT_OBJECTIVE)):
                value = raw.get(section)
                if isinstance(value, dict) and "name" not in value:
                    raw = {**raw, section: {"name": default, **value}}
        return raw

    @property
    def run_dir(self) -> Path:
        """``output.dir / output.name``, resolved; the name defaults to the first training
        file's stem. A name that ends up outside ``output.dir`` (say through a symlink named
        like the run) is refused rather than written to."""
        name = self.output.name or (self.data.train[0].stem if self.data.train else "run")
        parent = self.output.dir.resolve()
        run_dir = (parent / name).resolve()
        if run_dir.parent != parent:
            raise ConfigError(
                f"output.name: the run directory {run_dir} is not inside output.dir "
                f"({parent}). Fix: set output.name to a plain folder name."
            )
        return run_dir

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from defaults, an optional YAML file, then ``a.b=value`` overrides.

    Relative data, reward-model and teacher paths in a YAML file are taken relative to the
    file, so a preset runs from any working directory.
    """
    raw: dict[str, Any] = {}
    path = Path(path) if path is not None else None
    if path is not None:
        raw = _read_yaml(path)
        _resolve_paths(raw, path.parent)
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_explain(error, source=str(path) if path else "--set")) from None
    if config.output.name is None and path is not None:
        config.output.name = path.stem
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Pass the path of a YAML file.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(
            f"{where}: not valid YAML ({getattr(error, 'problem', error)})."
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, …).")
    return raw


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation", "test"):
            value = data.get(key)
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list):
                data[key] = [str(p if Path(p).is_absolute() else base / p) for p in value]
    objective = raw.get("objective")
    if isinstance(objective, dict):
        reward = objective.get("reward_model")
        if isinstance(reward, str) and not Path(reward).is_absolute():
            objective["reward_model"] = str(base / reward)
        teacher = objective.get("teacher")
        if isinstance(teacher, str) and (base / teacher).is_dir():
            objective["teacher"] = str(base / teacher)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example train.epochs=2.")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section.")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def _explain(error: ValidationError, source: str) -> str:
    lines = [f"{source}: the config has {error.error_count()} problem(s):"]
    for problem in error.errors():
        location = [str(p) for p in problem["loc"]]
        chosen = _chosen_setting(location)
        if chosen is not None:  # method.<its name>.key → method.key
            location = [location[0], *location[2:]]
        key = ".".join(location)
        value = problem.get("input")
        context = problem.get("ctx", {})
        if problem["type"] == "extra_forbidden":
            known = _known_keys(location[:-1], chosen)
            hint = difflib.get_close_matches(location[-1], known, n=1)
            fix = f" Did you mean {'.'.join([*location[:-1], hint[0]])!r}?" if hint else ""
            owner = f" {location[0]} {chosen} has no such setting." if chosen else ""
            lines.append(
                f"  - {key}: unknown key.{owner}{fix} Allowed here: {', '.join(sorted(known))}."
            )
            continue
        if problem["type"] == "union_tag_invalid":
            names = sorted(_registered(location[0]))
            hint = difflib.get_close_matches(str(context.get("tag")), names, n=1)
            fix = f" Did you mean {hint[0]!r}?" if hint else ""
            lines.append(
                f"  - {key}.name: {context.get('tag')!r} is not a {key}; use one of "
                f"{', '.join(names)}.{fix}"
            )
            continue
        allowed = context.get("expected")
        if allowed:
            hint = difflib.get_close_matches(
                str(value), [a.strip(" '") for a in allowed.split(",")]
            )
            fix = f" Did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"  - {key}: {value!r} is not allowed; use {allowed}.{fix}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {message} (got {value!r}).")
    return "\n".join(lines)


def _registered(section: str) -> dict[str, Any]:
    return {"method": METHODS, "objective": OBJECTIVES}.get(section, {})


def _chosen_setting(location: list[str]) -> str | None:
    """The method or objective name pydantic put into an error's location, if any."""
    if len(location) >= 2 and location[1] in _registered(location[0]):
        return location[1]
    return None


def _known_keys(location: list[str], chosen: str | None = None) -> list[str]:
    if chosen is not None and len(location) == 1:
        return list(_registered(location[0])[chosen].settings.model_fields)
    model: type[BaseModel] = RunConfig
    for part in location:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)

"""OpenAI's fine-tuning request body, checked field by field, and the objects we answer.

Shapes follow openai-python ``types/fine_tuning``: a job, an event, a checkpoint, a
file. Unknown fields are refused with a 400 that names them (a typo in a hyperparameter
must not train something else than asked). tunesmith's own settings go in the
``tunesmith`` extension field (docs/jobs.md): ``{"overrides": ["method.r=8", …]}``, in
the ``--set`` syntax, limited to the sections in `OVERRIDABLE` so no request names a
path on this machine (promise S4).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tunesmith.objectives.registry import objective_for_openai_method
from tunesmith.serve.errors import APIError

CREATE_FIELDS = {
    "model", "training_file", "validation_file", "method", "hyperparameters", "suffix",
    "seed", "integrations", "metadata", "tunesmith",
}  # fmt: skip
HYPERPARAMETERS = {"n_epochs", "batch_size", "learning_rate_multiplier"}
EXTRA_HYPERPARAMETERS = {"beta"}
"""Allowed besides `HYPERPARAMETERS` where the objective has the setting (DPO's beta)."""

OVERRIDABLE = (
    "method.", "train.", "objective.beta", "data.max_length", "data.split", "data.seed",
    "data.dedup", "data.on_overlength", "eval.enabled", "eval.max_items", "eval.metrics",
    "eval.max_new_tokens", "eval.k_shot",
)  # fmt: skip
NOT_OVERRIDABLE = ("train.report_to",)
MAX_SUFFIX = 64


def unknown(field: str) -> APIError:
    return APIError(400, f"Unrecognized request argument supplied: {field}", param=field)


def parse_create(body: object) -> dict[str, Any]:
    """The create body, checked; returns it normalised (method filled from hyperparameters)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for field in body:
        if field not in CREATE_FIELDS:
            raise unknown(field)
    for field in ("model", "training_file"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise APIError(400, f"Missing required parameter: '{field}'.", param=field)
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX
                               or not all(c.isalnum() or c in "-_" for c in suffix)):  # fmt: skip
        raise APIError(400, f"suffix: up to {MAX_SUFFIX} of a-z, 0-9, '-', '_'", param="suffix")
    if body.get("seed") is not None and not isinstance(body["seed"], int):
        raise APIError(400, "seed must be an integer", param="seed")
    method = _method(body)
    extension = _extension(body.get("tunesmith"))
    return {**body, "method": method, "tunesmith": extension}


def _method(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method")
    legacy = body.get("hyperparameters")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": legacy or {}}}
    elif legacy is not None:
        raise APIError(400, "send either method or hyperparameters, not both", param="method")
    if not isinstance(method, dict) or not isinstance(method.get("type"), str):
        raise APIError(400, "method.type is required", param="method.type")
    kind = method["type"]
    if objective_for_openai_method(kind) is None:
        raise APIError(400, f"method.type {kind!r} is not supported here", param="method.type")
    for field in method:
        if field not in ("type", kind):
            raise unknown(f"method.{field}")
    section = method.get(kind) or {}
    for field in section:
        if field != "hyperparameters":
            raise unknown(f"method.{kind}.{field}")
    values = section.get("hyperparameters") or {}
    objective = objective_for_openai_method(kind)
    allowed = HYPERPARAMETERS | (EXTRA_HYPERPARAMETERS & set(objective.settings.model_fields))
    where = f"method.{kind}.hyperparameters"
    for name, value in values.items():
        if name not in allowed:
            raise unknown(f"{where}.{name}")
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int | float)
                                or value <= 0):  # fmt: skip
            raise APIError(400, f"{where}.{name} must be a positive number or 'auto'",
                           param=f"{where}.{name}")  # fmt: skip
    return {"type": kind, kind: {"hyperparameters": dict(values)}}


def _extension(extension: object) -> dict[str, Any]:
    if extension is None:
        return {"overrides": []}
    if not isinstance(extension, dict):
        raise APIError(400, "tunesmith must be an object", param="tunesmith")
    for field in extension:
        if field != "overrides":
            raise unknown(f"tunesmith.{field}")
    overrides = extension.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise APIError(400, "tunesmith.overrides: a list of 'a.b=value'", param="tunesmith")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(OVERRIDABLE) or key.startswith(NOT_OVERRIDABLE):
            raise APIError(
                400,
                f"tunesmith.overrides: {key!r} cannot be set through the API (allowed: "
                f"{', '.join(OVERRIDABLE)}); paths on the server are the operator's choice.",
                param="tunesmith.overrides",
            )
    return {"overrides": list(overrides)}


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def job_object(row: sqlite3.Row) -> dict[str, Any]:
    body = json.loads(row["body"])
    method = body["method"]
    hyperparameters = method[method["type"]]["hyperparameters"]
    shown = {name: hyperparameters.get(name, "auto") for name in sorted(HYPERPARAMETERS)}
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "estimated_finish": row["estimated_finish"],
        "model": body["model"],
        "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "local",
        "status": row["status"],
        "error": _loads(row["error"]),
        "hyperparameters": shown,
        "method": method,
        "result_files": _loads(row["result_files"]) or [],
        "trained_tokens": row["trained_tokens"],
        "training_file": body["training_file"],
        "validation_file": body.get("validation_file"),
        "seed": body.get("seed") if body.get("seed") is not None else 42,
        "integrations": body.get("integrations") or [],
        "metadata": body.get("metadata"),
        "suffix": body.get("suffix"),
        "tunesmith": body.get("tunesmith"),
    }


def event_object(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "type": row["type"],
        "data": _loads(row["data"]),
    }


def checkpoint_object(row: sqlite3.Row, fine_tuned_model: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": f"{fine_tuned_model}:ckpt-step-{row['step']}",
        "fine_tuning_job_id": row["job_id"],
        "step_number": row["step"],
        "metrics": _loads(row["metrics"]),
    }


def file_object(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "sha256": row["sha256"],
    }


def fine_tuned_model_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:<base>:local:<suffix>:<job id>``, OpenAI's naming with "local" as the org."""
    return f"ft:{base}:local:{suffix or ''}:{job_id}"

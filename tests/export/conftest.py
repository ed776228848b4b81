"""A tiny LoRA run trained once per session, exported by the tests of every target; and the
real consumers (llama.cpp, Go's text/template) found or skipped, never faked."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from ..serve.conftest import train_tiny_run


def require(present: bool, env: str, what: str) -> None:
    """Skip without the consumer, unless `make test` says it must be installed (then fail)."""
    if present:
        return
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is missing but {env}=1 says it must be installed")
    pytest.skip(f"{what} is not installed")


@pytest.fixture
def llama_cpp() -> None:
    require(
        importlib.util.find_spec("llama_cpp") is not None,
        "TUNESMITH_REQUIRE_LLAMA_CPP",
        "llama-cpp-python (pip install llama-cpp-python)",
    )


@pytest.fixture
def go_binary() -> str:
    go = shutil.which("go")
    require(go is not None, "TUNESMITH_REQUIRE_GO", "Go (apt-get install golang-go)")
    assert go is not None
    return go


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A finished LoRA run on the tiny model (fresh copies per test: see ``fresh_run``)."""
    workdir = tmp_path_factory.mktemp("export-runs")
    return train_tiny_run(workdir, tiny_model_dir, "facts", steps=30)


@pytest.fixture
def fresh_run(lora_run: Path, tmp_path: Path) -> Path:
    """The session's run copied, so one test's export (or tampering) never meets another's."""
    copy = tmp_path / lora_run.name
    shutil.copytree(lora_run, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))
    return copy

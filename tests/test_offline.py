"""Offline by construction: no tunesmith entry point reaches the network unless the user
opts in with TUNESMITH_ALLOW_DOWNLOADS=1, and bitsandbytes is not loaded by tunesmith itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

REPO_ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import os, sys
{before}
import tunesmith
import huggingface_hub.constants as hub
print("BNB", "bitsandbytes" in sys.modules)
print("ENV", [os.environ.get(v) for v in tunesmith.OFFLINE_ENV_VARS])
print("HUB", hub.HF_HUB_OFFLINE)
"""


def _probe(env_overrides: dict[str, str], before: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_ALLOW_DOWNLOADS"}
    env.update(env_overrides)
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(before=before)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_forces_offline_even_when_the_environment_says_online() -> None:
    out = _probe({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"})
    assert "BNB False" in out
    assert "ENV ['1', '1', '1']" in out
    assert "HUB True" in out


def test_a_hub_imported_before_tunesmith_is_switched_offline_too() -> None:
    out = _probe({"HF_HUB_OFFLINE": "0"}, before="import huggingface_hub")
    assert "HUB True" in out


def test_the_documented_switch_is_the_only_way_online() -> None:
    out = _probe({"HF_HUB_OFFLINE": "0", "TUNESMITH_ALLOW_DOWNLOADS": "1"})
    assert "ENV ['0'," in out
    assert "HUB False" in out


def test_the_cli_cannot_be_put_online_by_hf_hub_offline_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_ALLOW_DOWNLOADS"}
    env.update(HF_HUB_OFFLINE="0", PYTHONPATH=str(REPO_ROOT / "src"))
    probe = (
        "import os, sys\n"
        "from tunesmith.cli import app\n"
        "import huggingface_hub.constants as hub\n"
        "print('OFFLINE', os.environ['HF_HUB_OFFLINE'], hub.HF_HUB_OFFLINE)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "OFFLINE 1 True" in result.stdout


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every outgoing connection raises (and is recorded), as on a machine with no network."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:] or args))
        raise NetworkUsed(f"network connection attempted: {args[1:] or args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_train_eval_and_merge_succeed_with_every_socket_blocked(run_setup, no_network) -> None:
    config, workdir = run_setup
    out = workdir / "runs"
    trained = runner_invoke(
        ["train", str(config), "--set", f"output.dir={out}", "--set", "data.split=[0.6,0.2,0.2]",
         "--set", "eval.max_new_tokens=4", "--no-eval"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = runner_invoke(["eval", str(out / "resume"), "--max-items", "3"])
    assert evaluated.exit_code == 0, evaluated.output
    assert (out / "resume" / "eval" / "results.json").is_file()
    merged = runner_invoke(["merge", str(out / "resume")])
    assert merged.exit_code == 0, merged.output
    assert (out / "resume" / "merged" / "model.safetensors").is_file()
    assert no_network == []


def test_the_socket_guard_does_catch_a_connection(no_network) -> None:
    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 9))
    assert len(no_network) == 1


def runner_invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=True)

"""Promise S-remote-code: a run directory can never grant itself the right to run model code.

The run's base model here ships Python code (``auto_map`` in its config.json) that leaves a
marker file when it is imported; only ``--trust-remote-code`` / ``trust_remote_code=True``
given by this invocation may import it, whatever the run's own config.yaml says.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.runs import REMOTE_CODE_FLAG, load_trained

runner = CliRunner()

_REMOTE_CONFIG = """
from pathlib import Path
from transformers import LlamaConfig

Path({marker!r}).write_text("model code ran")


class CodeShippingConfig(LlamaConfig):
    model_type = "llama"
"""

_REMOTE_MODEL = """
from pathlib import Path
from transformers import LlamaForCausalLM

from .configuration_shipped import CodeShippingConfig

Path({marker!r}).write_text("model code ran")


class CodeShippingForCausalLM(LlamaForCausalLM):
    config_class = CodeShippingConfig
"""


@pytest.fixture
def run_that_asks_for_remote_code(run_setup, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A trained run whose config.yaml says trust_remote_code: true, over a base model dir
    that ships code; returns (run dir, the marker that code writes)."""
    config, workdir = run_setup
    out = workdir / "runs"
    trained = runner.invoke(app, ["train", str(config), "--set", f"output.dir={out}", "--no-eval"])
    assert trained.exit_code == 0, trained.output
    run_dir = out / "resume"

    marker = workdir / "remote-code-ran"
    shipping = workdir / "code-shipping-model"
    shutil.copytree(tiny_model_dir, shipping)
    (shipping / "configuration_shipped.py").write_text(
        textwrap.dedent(_REMOTE_CONFIG.format(marker=str(marker)))
    )
    (shipping / "modeling_shipped.py").write_text(
        textwrap.dedent(_REMOTE_MODEL.format(marker=str(marker)))
    )
    model_config = json.loads((shipping / "config.json").read_text())
    model_config["auto_map"] = {
        "AutoConfig": "configuration_shipped.CodeShippingConfig",
        "AutoModelForCausalLM": "modeling_shipped.CodeShippingForCausalLM",
    }
    (shipping / "config.json").write_text(json.dumps(model_config))

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["model"]["name"] = str(shipping)
    saved["model"]["trust_remote_code"] = True
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    return run_dir, marker


def test_the_stored_value_is_shown_and_ignored_by_every_command(
    run_that_asks_for_remote_code,
) -> None:
    run_dir, marker = run_that_asks_for_remote_code
    held_out = run_dir.parents[1] / "held_out.jsonl"
    held_out.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"new question {i}"},
                                     {"role": "assistant", "content": "Paris"}]}) + "\n"
            for i in range(3)
        )
    )  # fmt: skip
    commands = [
        ["generate", str(run_dir), "--prompt", "hi", "--max-new-tokens", "2"],
        ["chat", str(run_dir), "--max-new-tokens", "2"],
        ["merge", str(run_dir)],
        ["eval", str(run_dir), "--test", str(held_out), "--max-items", "2"],
    ]  # fmt: skip
    for command in commands:
        result = runner.invoke(app, command, input="\n")
        assert result.exit_code == 0, (command, result.output[-3000:])
        assert "trust_remote_code: true; ignored" in result.output, command
        assert REMOTE_CODE_FLAG in result.output, command
        assert not marker.exists(), command


def test_the_flag_of_this_invocation_is_what_grants_it(run_that_asks_for_remote_code) -> None:
    run_dir, marker = run_that_asks_for_remote_code
    result = runner.invoke(
        app, ["generate", str(run_dir), "--prompt", "hi", "--max-new-tokens", "2",
              "--trust-remote-code"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert marker.read_text() == "model code ran"
    assert "ignored" not in result.output


def test_the_python_api_ignores_the_stored_value_unless_the_call_passes_it(
    run_that_asks_for_remote_code,
) -> None:
    run_dir, marker = run_that_asks_for_remote_code
    ignored = load_trained(run_dir, device="cpu")
    assert not marker.exists()
    assert len(ignored.notices) == 1 and REMOTE_CODE_FLAG in ignored.notices[0]
    assert ignored.config.model.trust_remote_code is False

    granted = load_trained(run_dir, device="cpu", trust_remote_code=True)
    assert marker.exists() and granted.notices == []

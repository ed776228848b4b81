"""Bad export requests through the real CLI: one clear line, the documented exit code, and
nothing partial left behind."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.engine.checkpoint import DISK_FULL_EXIT_CODE

runner = CliRunner()


def _export(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["export", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_unknown_quant_and_target_suggest_the_right_name(fresh_run: Path) -> None:
    code, output = _export(str(fresh_run), "--quant", "q4_km")
    assert code == 2 and "did you mean 'q4_k_m'" in output
    code, output = _export(str(fresh_run), "--to", "olama")
    assert code == 2 and "did you mean 'ollama'" in output


def test_an_unfinished_run_and_a_folder_that_is_no_run(fresh_run: Path, tmp_path: Path) -> None:
    shutil.rmtree(fresh_run / "final")
    code, output = _export(str(fresh_run))
    assert code == 2 and "has not finished training" in output
    code, output = _export(str(tmp_path / "nowhere"))
    assert code == 2 and "not a tunesmith run directory" in output


def test_a_flipped_byte_in_final_is_refused(fresh_run: Path) -> None:
    weights = fresh_run / "final" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    code, output = _export(str(fresh_run), "--no-verify")
    assert code == 2
    assert "adapter_model.safetensors: sha256 differs" in output
    assert not (fresh_run / "export" / "gguf").exists()


def test_a_full_disk_exits_74_and_leaves_nothing(
    fresh_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunesmith.export.gguf_export as gguf_export

    def fill_the_disk(path: Path, *args: object) -> None:
        path.write_bytes(b"GGUF" + b"\0" * 1000)  # a partial file, as a real ENOSPC leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "write_model_gguf", fill_the_disk)
    code, output = _export(str(fresh_run), "--no-verify")
    assert code == DISK_FULL_EXIT_CODE and "the disk filled" in output
    assert list((fresh_run / "export" / "gguf").iterdir()) == []

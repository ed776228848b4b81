"""The Modelfile's Go TEMPLATE, rendered by Go's text/template (Ollama's engine), writes the
same prompt as the Jinja template training rendered with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tunesmith.export import export_run
from tunesmith.export.chat_format import read_chat_format
from tunesmith.export.ollama import go_template

from .test_chat_format import BOS_PREAMBLE, SMOLLM_LIKE

GO_RENDERER = Path(__file__).parent / "go_render"
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "book a table"}],
    [
        {"role": "user", "content": "Hi {{ not a template }}"},
        {"role": "assistant", "content": 'Hello "friend"\nsecond line'},
        {"role": "user", "content": "Bye"},
    ],
]


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from .conftest import require

    go = shutil.which("go")
    require(go is not None, "TUNESMITH_REQUIRE_GO", "Go (apt-get install golang-go)")
    binary = tmp_path_factory.mktemp("go") / "render"
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_RENDERER,
        check=True,
        env={
            "GOCACHE": str(binary.parent / "cache"),
            "HOME": str(binary.parent),
            "PATH": "/usr/bin:/bin",
        },
    )
    return binary


def _go_render(binary: Path, template: str, conversations: list) -> list[str]:
    request = json.dumps({"template": template, "conversations": conversations})
    done = subprocess.run([binary], input=request, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _as_ollama_sends(conversation: list[dict], system: str | None) -> list[dict]:
    """Ollama puts the Modelfile's SYSTEM first when a request brings no system message."""
    if system is not None and conversation[0]["role"] != "system":
        return [{"role": "system", "content": system}, *conversation]
    return conversation


@pytest.mark.parametrize("template", [None, SMOLLM_LIKE, BOS_PREAMBLE])
def test_go_template_renders_exactly_like_jinja(
    renderer: Path, tiny_tokenizer: PreTrainedTokenizerFast, template: str | None
) -> None:
    original = tiny_tokenizer.chat_template
    tiny_tokenizer.chat_template = template or original
    try:
        chat = read_chat_format(tiny_tokenizer)
        sent = [_as_ollama_sends(c, chat.default_system) for c in CONVERSATIONS]
        rendered = _go_render(renderer, go_template(chat), sent)
        expected = [
            tiny_tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in CONVERSATIONS
        ]
    finally:
        tiny_tokenizer.chat_template = original
    assert rendered == expected


def test_modelfile_names_the_gguf_template_and_stops(fresh_run: Path) -> None:
    result = export_run(fresh_run, "ollama", quant="q8_0", verify_items=0)
    modelfile = (result.out_dir / "Modelfile").read_text()
    assert "FROM ./facts-q8_0.gguf" in modelfile
    assert (result.out_dir / "facts-q8_0.gguf").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'TEMPLATE """' in modelfile and "{{ range $i, $_ := .Messages }}" in modelfile

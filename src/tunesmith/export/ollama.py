"""`--to ollama`: the merged GGUF and a Modelfile that never leaves Ollama to guess.

Without a TEMPLATE Ollama matches the GGUF's Jinja template against its own by edit
distance and otherwise sends the raw prompt with no chat markers; without `PARAMETER stop`
a fine-tune rambles into a fake next turn. So the Modelfile always carries a Go template
built from the measured chat format and one stop per end-of-turn token.
"""

from __future__ import annotations

import json

from tunesmith.export.chat_format import ROLES, ChatFormat
from tunesmith.export.gguf_export import export_gguf
from tunesmith.export.prepare import ExportInputs
from tunesmith.export.quants import Quant
from tunesmith.export.result import Artifact, ExportResult
from tunesmith.export.source import staged_file

MODELFILE = "Modelfile"


def _literal(text: str) -> str:
    """Template text that Go prints verbatim: raw, or a quoted string when it holds braces."""
    if "{{" in text or "}}" in text:
        return "{{ " + json.dumps(text) + " }}"
    return text


def go_template(chat: ChatFormat) -> str:
    """The chat format as an Ollama (Go text/template) TEMPLATE over ``.Messages``.

    Ollama adds the Modelfile's SYSTEM as the first message when a request has none, so the
    template's default system prompt lives in SYSTEM, not here.
    """
    turns = "".join(
        ("{{ if" if index == 0 else "{{ else if")
        + f' eq .Role "{role}" }}}}'
        + _literal(chat.prefixes[role])
        + "{{ .Content }}"
        + _literal(chat.suffixes[role])
        for index, role in enumerate(ROLES)
    )
    return (
        _literal(chat.preamble)
        + "{{ range $i, $_ := .Messages }}"
        + "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + turns
        + "{{ end }}"
        + '{{ if and $last (ne .Role "assistant") }}'
        + _literal(chat.generation_prompt)
        + "{{ end }}{{ end }}"
    )


def _quoted(text: str) -> str:
    """A Modelfile argument: triple-quoted, so newlines and quotes survive."""
    if '"""' in text:
        return json.dumps(text)
    return f'"""{text}"""'


def modelfile(model_file: str, chat: ChatFormat, stop_texts: list[str], system: str | None) -> str:
    lines = [
        "# Written by tunesmith export --to ollama. Create the model with:",
        "#   ollama create NAME -f Modelfile",
        f"FROM ./{model_file}",
        f"TEMPLATE {_quoted(go_template(chat))}",
    ]
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f"PARAMETER stop {json.dumps(text)}" for text in stop_texts]
    # tunesmith evaluated greedy decoding; this reproduces it (raise it for variety).
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def export_ollama(inputs: ExportInputs, quant: Quant, *, verify_items: int) -> ExportResult:
    out_dir = inputs.source.out_dir("ollama")
    gguf_result = export_gguf(inputs, [quant], verify_items=verify_items, out_dir=out_dir)
    model = gguf_result.artifacts[0]
    tokenizer = inputs.tokenizer
    stops = [tokenizer.convert_ids_to_tokens(i) for i in inputs.chat.end_of_turn_ids]
    system = inputs.trained_system_prompt() or inputs.chat.default_system
    text = modelfile(model.path.name, inputs.chat, stops, system)
    with staged_file(out_dir / MODELFILE) as staging:
        staging.write_text(text, encoding="utf-8")
    result = ExportResult("ollama", out_dir, warnings=gguf_result.warnings)
    result.artifacts = [model, Artifact(out_dir / MODELFILE, "modelfile")]
    result.notes.append(
        f"cd {out_dir} && ollama create {inputs.source.name} -f {MODELFILE} && "
        f"ollama run {inputs.source.name}"
    )
    return result

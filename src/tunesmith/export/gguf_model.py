"""Write a merged LLaMA-family model as one GGUF file that llama.cpp and Ollama load as is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from tunesmith.export.chat_format import ChatFormat
from tunesmith.export.gguf_vocab import GGUFVocab
from tunesmith.export.llama_layout import LlamaShape, gguf_name, rope_heads, rope_rows_to_pairs
from tunesmith.export.quants import Quant, encode


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from, written as `general.*` and `tunesmith.*` keys."""

    name: str
    base_model: str
    run_id: str
    method: str
    tunesmith_version: str
    datasets: tuple[str, ...] = ()
    license: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def write_header(
    writer: gguf.GGUFWriter, provenance: Provenance, chat: ChatFormat, vocab: GGUFVocab | None
) -> None:
    writer.add_name(provenance.name)
    writer.add_finetune(provenance.run_id)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, provenance.base_model)
    if provenance.datasets:
        writer.add_dataset_count(len(provenance.datasets))
        for index, dataset in enumerate(provenance.datasets):
            writer.add_dataset_name(index, dataset)
    if provenance.license:
        writer.add_license(provenance.license)
    writer.add_string("tunesmith.run_id", provenance.run_id)
    writer.add_string("tunesmith.method", provenance.method)
    writer.add_string("tunesmith.version", provenance.tunesmith_version)
    for key, value in provenance.extra.items():
        writer.add_string(f"tunesmith.{key}", value)
    if vocab is not None:
        vocab.write(writer)
        writer.add_chat_template(chat.template)
        # Evaluation measured greedy decoding; a runtime that reads these reproduces it.
        writer.add_sampling_temp(0.0)
        writer.add_sampling_top_k(1)


def write_shape(writer: gguf.GGUFWriter, shape: LlamaShape) -> None:
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.embedding_length)
    writer.add_block_count(shape.block_count)
    writer.add_feed_forward_length(shape.feed_forward_length)
    writer.add_head_count(shape.head_count)
    writer.add_head_count_kv(shape.head_count_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.vocab_size)


def gguf_tensors(
    state: Iterable[tuple[str, torch.Tensor]], shape: LlamaShape
) -> Iterable[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array) for each weight, Q/K rows reordered for llama.cpp's rope; the
    output head is left out when it is the tied embedding."""
    for name, tensor in state:
        if name == "lm_head.weight" and shape.tied_embeddings:
            continue
        array = tensor.detach().to(torch.float32).cpu().numpy()
        heads = rope_heads(name, shape)
        if heads is not None:
            array = rope_rows_to_pairs(array, heads)
        yield gguf_name(name), array


def write_model_gguf(
    path: Path,
    state: Iterable[tuple[str, torch.Tensor]],
    shape: LlamaShape,
    quant: Quant,
    vocab: GGUFVocab,
    chat: ChatFormat,
    provenance: Provenance,
) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    write_header(writer, provenance, chat, vocab)
    write_shape(writer, shape)
    writer.add_file_type(int(quant.file_type))
    quantized = False
    for name, array in gguf_tensors(state, shape):
        data, kind = encode(array, quant)
        quantized |= kind not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        writer.add_tensor(name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
    if quantized:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

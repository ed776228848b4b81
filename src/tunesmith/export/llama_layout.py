"""How a transformers LLaMA-family checkpoint maps onto llama.cpp's `llama` architecture.

Two facts matter and both are easy to get silently wrong:
- names: `model.layers.3.self_attn.q_proj.weight` is `blk.3.attn_q.weight` in GGUF;
- rotary layout: transformers rotates the two halves of each head (`rotate_half`), llama.cpp's
  `llama` rope rotates adjacent pairs, so the rows of Q and K (and of a LoRA's B for them) are
  reordered within each head. Forget it and the model loads and talks nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.export.errors import ExportError

LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

_LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_LEVEL = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters llama.cpp reads, taken from the model's own config."""

    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int
    rope_freq_base: float
    rms_norm_eps: float
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: Any) -> LlamaShape:
        architectures = list(getattr(config, "architectures", None) or [])
        if not set(architectures) & set(LLAMA_ARCHITECTURES):
            raise ExportError(
                "GGUF export supports the LLaMA architecture family "
                f"({', '.join(LLAMA_ARCHITECTURES)}); this model is "
                f"{architectures or config.model_type}. Use --to hf (or --to vllm) instead."
            )
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise ExportError(
                f"the model uses rope scaling {rope_type!r}, which this GGUF writer does not map; "
                "use --to hf instead."
            )
        heads = config.num_attention_heads
        return cls(
            context_length=config.max_position_embeddings,
            embedding_length=config.hidden_size,
            block_count=config.num_hidden_layers,
            feed_forward_length=config.intermediate_size,
            head_count=heads,
            head_count_kv=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            rope_freq_base=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
            rms_norm_eps=float(config.rms_norm_eps),
            vocab_size=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of a transformers parameter name (``….weight`` kept as suffix)."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem in _TOP_LEVEL:
        return f"{_TOP_LEVEL[stem]}.{suffix}"
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_PARTS:
        return f"blk.{int(parts[2])}.{_LAYER_PARTS[parts[3]]}.{suffix}"
    raise ExportError(
        f"tensor {hf_name!r} has no place in llama.cpp's llama architecture; "
        "the model is not a plain LLaMA. Use --to hf instead."
    )


def rope_rows_to_pairs(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the output rows of a Q or K projection from halves to adjacent pairs per head.

    Within a head of ``d`` rows, row ``i`` of the first half and row ``i`` of the second half
    are the two coordinates that rotate together; llama.cpp wants them at ``2i`` and ``2i+1``.
    """
    out_features = rows.shape[0]
    per_head = out_features // heads
    grouped = rows.reshape(heads, 2, per_head // 2, *rows.shape[1:])
    return grouped.swapaxes(1, 2).reshape(rows.shape)


def rope_heads(hf_name: str, shape: LlamaShape) -> int | None:
    """How many heads the rows of this tensor hold, if its rows must be reordered for rope."""
    if ".self_attn.q_proj." in hf_name:
        return shape.head_count
    if ".self_attn.k_proj." in hf_name:
        return shape.head_count_kv
    return None

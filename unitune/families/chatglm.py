"""ChatGLM2-6B / ChatGLM3-6B (and GLM-4-9B's chatglm-format checkpoints, unitune.families.glm4): converted to
transformers' native GlmForCausalLM, the same architecture (multi-query attention, RoPE on half of each head in
interleaved pairs, RMSNorm, SwiGLU, bias on q/k/v only). The tokenizer stays the checkpoint's own (sentencepiece plus
[gMASK]/sop), with the patches transformers 5 needs.

ChatGLM-6B (v1, 2D positions, GLM blocks) has no native counterpart and is refused.
"""

from __future__ import annotations

import json

from unitune.errors import UnituneError
from unitune.families import preload_attribute, remote_class


def variant(config: dict, path) -> str:
    """Which registry entry a model_type "chatglm" checkpoint is. All three share config and weight layout; the
    tokenizer tells them apart: GLM-4's is a tiktoken class (ChatGLM4Tokenizer, vocabulary 151552), ChatGLM3's
    sentencepiece class knows the role tokens (<|user|> ...) that ChatGLM2's lacks."""
    from pathlib import Path

    tokenizer_config = Path(path) / "tokenizer_config.json"
    auto_map = json.loads(tokenizer_config.read_text()).get("auto_map", {}) if tokenizer_config.is_file() else {}
    classes = auto_map.get("AutoTokenizer") or [""]
    if "ChatGLM4Tokenizer" in str(classes[0]) or config.get("padded_vocab_size") == 151552:
        return "glm4"
    code = Path(path) / "tokenization_chatglm.py"
    if code.is_file() and "<|user|>" in code.read_text(encoding="utf-8", errors="replace"):
        return "chatglm3"
    return "chatglm"


def is_convertible(config: dict, path=None) -> bool:
    if config.get("model_type") != "chatglm":
        return False  # already native (e.g. a merged model unitune wrote)
    if "position_encoding_2d" in config or "multi_query_attention" not in config:
        raise UnituneError("ChatGLM-6B (v1) checkpoints are not supported: its GLM blocks with 2D positions have no "
                           "transformers counterpart; use ChatGLM2-6B or ChatGLM3-6B")
    if config.get("original_rope", True) is not True or config.get("apply_residual_connection_post_layernorm"):
        raise UnituneError("this ChatGLM checkpoint's config (original_rope false or post-layernorm residuals) "
                           "differs from ChatGLM2/3's architecture and cannot be converted")
    return True


def native_config(config: dict, path=None):
    from transformers import GlmConfig

    heads = config["num_attention_heads"]
    head_dim = config.get("kv_channels", config["hidden_size"] // heads)
    return GlmConfig(
        vocab_size=config["padded_vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"], num_hidden_layers=config["num_layers"],
        num_attention_heads=heads, head_dim=head_dim,
        num_key_value_heads=config["multi_query_group_num"] if config.get("multi_query_attention") else heads,
        max_position_embeddings=config.get("seq_length", 8192), rms_norm_eps=config["layernorm_epsilon"],
        # ChatGLM2 rotates head_dim / 2 dims with base 10000 (ChatGLM3-32k scales it by rope_ratio)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * config.get("rope_ratio", 1),
                         "partial_rotary_factor": 0.5},
        attention_bias=bool(config.get("add_qkv_bias", True)), tie_word_embeddings=False,
        pad_token_id=config.get("pad_token_id", 0), eos_token_id=config.get("eos_token_id", 2),
        architectures=["GlmForCausalLM"], dtype="float32")


def native_weights(config: dict, weights: dict, path=None) -> dict:
    if any(key.startswith("transformer.prefix_encoder") for key in weights):
        raise UnituneError("this ChatGLM checkpoint carries its own P-tuning prefix encoder; merge or drop it first")
    heads = config["num_attention_heads"]
    head_dim = config.get("kv_channels", config["hidden_size"] // heads)
    groups = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
    sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
    out = {"model.embed_tokens.weight": weights["transformer.embedding.word_embeddings.weight"],
           "model.norm.weight": weights["transformer.encoder.final_layernorm.weight"],
           "lm_head.weight": weights["transformer.output_layer.weight"]}
    for i in range(config["num_layers"]):
        src, dst = f"transformer.encoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = weights.get(f"{src}self_attention.query_key_value.{kind}")
            if qkv is not None:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), qkv.split(sizes, dim=0)):
                    out[f"{dst}self_attn.{name}.{kind}"] = part
        out[f"{dst}self_attn.o_proj.weight"] = weights[f"{src}self_attention.dense.weight"]
        out[f"{dst}mlp.gate_up_proj.weight"] = weights[f"{src}mlp.dense_h_to_4h.weight"]  # [gate; up] as in Glm
        out[f"{dst}mlp.down_proj.weight"] = weights[f"{src}mlp.dense_4h_to_h.weight"]
        out[f"{dst}input_layernorm.weight"] = weights[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = weights[f"{src}post_attention_layernorm.weight"]
    return out


def _pad(self, encoded_inputs, max_length=None, padding_strategy=None, pad_to_multiple_of=None,
         padding_side=None, return_attention_mask=None):
    """transformers 5 passes `padding_side` to _pad, which ChatGLM's override lacks, and that override asserts left
    padding while training batches pad on the right: use the base class's _pad, which honours either side."""
    from transformers import PreTrainedTokenizer

    return PreTrainedTokenizer._pad(self, encoded_inputs, max_length=max_length, padding_strategy=padding_strategy,
                                    pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
                                    return_attention_mask=return_attention_mask)


def load_tokenizer(path: str):
    cls = remote_class(path, "tokenization_chatglm.ChatGLMTokenizer")
    preload_attribute(cls, "tokenizer", remote_class(path, "tokenization_chatglm.SPTokenizer"))
    cls._pad = _pad
    # position_ids come from the model (the native Glm computes them); the tokenizer's would be [0..n) per row
    cls.model_input_names = ["input_ids", "attention_mask"]
    return cls.from_pretrained(path)

"""InternLM2 / InternLM2.5 chat checkpoints: LLaMA after splitting the fused, grouped `wqkv`, so they are converted to
transformers' native LlamaForCausalLM and none of the checkpoint's modeling code runs (it needs einops and
breaks on transformers 5's `rope_scaling`). The tokenizer is the checkpoint's own slow sentencepiece class: its
fast class, built without a tokenizer.json, silently drops spaces.
"""

from __future__ import annotations

from unitune.errors import UnituneError
from unitune.families import remote_class


def is_convertible(config: dict, path=None) -> bool:
    if config.get("model_type") != "internlm2":
        return False  # already native (e.g. a merged model unitune wrote)
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("type") not in ("linear", "dynamic"):
        raise UnituneError(f"InternLM2 rope_scaling {scaling!r} is not supported (linear or dynamic only)")
    return True


def native_config(config: dict, path=None):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000))}
    scaling = config.get("rope_scaling")
    if scaling:  # InternLM2's "dynamic" is transformers' dynamic NTK, "linear" its linear interpolation
        rope = {**rope, "rope_type": scaling["type"], "factor": float(scaling["factor"])}
    return LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        max_position_embeddings=config.get("max_position_embeddings", 2048), rms_norm_eps=config["rms_norm_eps"],
        rope_parameters=rope, attention_bias=bool(config.get("bias", False)), mlp_bias=False,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id", 1), eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 2), architectures=["LlamaForCausalLM"], dtype="float32")


def native_weights(config: dict, weights: dict, path=None) -> dict:
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim, groups = hidden // heads, heads // (config.get("num_key_value_heads") or heads)
    out = {"model.embed_tokens.weight": weights["model.tok_embeddings.weight"],
           "model.norm.weight": weights["model.norm.weight"], "lm_head.weight": weights["output.weight"]}
    for i in range(config["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            wqkv = weights.get(f"{src}attention.wqkv.{kind}")
            if wqkv is None:
                continue
            # rows are laid out per key/value head: its `groups` query heads, then its key, then its value
            blocks = wqkv.reshape(kv_heads, groups + 2, head_dim, *wqkv.shape[1:])
            out[f"{dst}self_attn.q_proj.{kind}"] = blocks[:, :groups].reshape(heads * head_dim, *wqkv.shape[1:])
            out[f"{dst}self_attn.k_proj.{kind}"] = blocks[:, -2].reshape(kv_heads * head_dim, *wqkv.shape[1:])
            out[f"{dst}self_attn.v_proj.{kind}"] = blocks[:, -1].reshape(kv_heads * head_dim, *wqkv.shape[1:])
        for old, new in (("attention.wo", "self_attn.o_proj"), ("feed_forward.w1", "mlp.gate_proj"),
                         ("feed_forward.w3", "mlp.up_proj"), ("feed_forward.w2", "mlp.down_proj")):
            for kind in ("weight", "bias"):
                if f"{src}{old}.{kind}" in weights:
                    out[f"{dst}{new}.{kind}"] = weights[f"{src}{old}.{kind}"]
        out[f"{dst}input_layernorm.weight"] = weights[f"{src}attention_norm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = weights[f"{src}ffn_norm.weight"]
    return out


def load_tokenizer(path: str):
    return remote_class(path, "tokenization_internlm2.InternLM2Tokenizer").from_pretrained(path)

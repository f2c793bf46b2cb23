"""InternLM (v1) chat checkpoints: LLaMA with biases on q/k/v/o under the same weight names, so only the config is
rewritten (to a native LlamaConfig with attention_bias) and none of the checkpoint's modeling code runs.
A checkpoint that already is a native LLaMA loads as it is."""

from __future__ import annotations


def is_convertible(config: dict, path=None) -> bool:
    return config.get("model_type") == "internlm"  # a native llama config needs nothing


def native_config(config: dict, path=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"], max_position_embeddings=config.get("max_position_embeddings", 2048),
        rms_norm_eps=config["rms_norm_eps"], attention_bias=bool(config.get("bias", True)),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000))},
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2), pad_token_id=config.get("pad_token_id", 0),
        architectures=["LlamaForCausalLM"], dtype="float32")


def native_weights(config: dict, weights: dict, path=None) -> dict:
    return dict(weights)

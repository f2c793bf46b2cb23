"""GLM-4-9B / GLM-4-9B-Chat in THUDM's chatglm format: ChatGLM2's architecture and weight names (its RoPE base
scaled by rope_ratio, which unitune.families.chatglm reads), so converted to native GlmForCausalLM the same way
transformers' own GLM conversion maps it. Its tokenizer is a tiktoken class (ChatGLM4Tokenizer) that runs as the
checkpoint's code, with the one patch it shares with ChatGLM's: its _pad lacks transformers 5's `padding_side`
and asserts left padding. The -hf release (model_type "glm", tokenizer.json) and GLM-4-0414 (model_type "glm4")
are native already and load as they are.
"""

from __future__ import annotations

from unitune.errors import UnituneError
from unitune.families import remote_class
from unitune.families.chatglm import _pad, is_convertible, native_config, native_weights, variant

__all__ = ["is_convertible", "load_tokenizer", "native_config", "native_weights", "variant"]


def load_tokenizer(path: str):
    import importlib.util

    if importlib.util.find_spec("tiktoken") is None:
        raise UnituneError(f"{path}: GLM-4's tokenizer (tokenization_chatglm.py) needs tiktoken: pip install tiktoken")
    cls = remote_class(path, "tokenization_chatglm.ChatGLM4Tokenizer")
    cls._pad = _pad
    cls.model_input_names = ["input_ids", "attention_mask"]  # the native Glm computes position ids itself
    return cls.from_pretrained(path)

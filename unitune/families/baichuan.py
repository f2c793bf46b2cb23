"""Baichuan / Baichuan2 checkpoints (config.json model_type "baichuan", fused q/k/v `W_pack`).

- The 7B models (Baichuan-7B, Baichuan2-7B-Base/Chat) are LLaMA with rotary positions: converted to native
  LlamaForCausalLM by splitting W_pack into q/k/v (rows [q; k; v], as their attention unflattens it) and, for
  Baichuan2, folding NormHead into lm_head (its forward is linear(h, normalize(W)) with rows L2-normalized, in
  training and in eval alike; normalizing is idempotent, so an already normalized head stays the same).
- The 13B models (ALiBi positions; Baichuan2's with NormHead) have no native transformers architecture: they run
  their own modeling code (which loads and trains on transformers 5 as it is).
Both keep their own sentencepiece tokenizer, patched for the transformers 5 change it predates.
Baichuan 1 and 2 share the format; Baichuan2's modeling file defines NormHead (and its vocabulary is 125696).
"""

from __future__ import annotations

from pathlib import Path

from unitune.errors import UnituneError
from unitune.families import preload_attribute, remote_class

BAICHUAN2_VOCAB = 125696


def _modeling_code(path) -> str | None:
    file = Path(path) / "modeling_baichuan.py" if path is not None else None
    return file.read_text(encoding="utf-8", errors="replace") if file is not None and file.is_file() else None


def variant(config: dict, path) -> str:
    """ "baichuan2" or "baichuan": the modeling file's NormHead where the checkpoint ships one, else the vocabulary."""
    code = _modeling_code(path)
    if code is not None:
        return "baichuan2" if "class NormHead" in code else "baichuan"
    return "baichuan2" if config.get("vocab_size") == BAICHUAN2_VOCAB else "baichuan"


def _rotary(config: dict, path) -> bool:
    """7B (RoPE) vs 13B (ALiBi): the modeling file's attention, else the config field the 7B code reads for its
    rotary tables (max_position_embeddings; the 13B configs have model_max_length only)."""
    code = _modeling_code(path)
    if code is not None:
        return "RotaryEmbedding" in code
    return "max_position_embeddings" in config


def is_convertible(config: dict, path=None, norm_head: bool = False) -> bool:
    if config.get("model_type") != "baichuan" or not _rotary(config, path):
        return False  # native already (a merged 7B), or a 13B model that runs its own code
    if _modeling_code(path) is not None and (variant(config, path) == "baichuan2") != norm_head:
        found = variant(config, path)
        raise UnituneError(f"{path} is a {found} checkpoint (its modeling_baichuan.py "
                           f"{'defines' if found == 'baichuan2' else 'has no'} NormHead), which converts with a "
                           f"different output head: pass --model_type {found} (or auto)")
    return True


def native_config(config: dict, path=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"], hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config["max_position_embeddings"], rms_norm_eps=config["rms_norm_eps"],
        # the 7B code's RotaryEmbedding has base 10000 built in (no config field)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2), pad_token_id=config.get("pad_token_id", 0),
        architectures=["LlamaForCausalLM"], dtype="float32")


def native_weights(config: dict, weights: dict, path=None, norm_head: bool = False) -> dict:
    import torch.nn.functional as F

    out = {}
    for key, value in weights.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # Baichuan-7B saved its rotary buffer; LLaMA recomputes it
        if key.endswith("self_attn.W_pack.weight"):
            prefix = key[: -len("W_pack.weight")]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}{name}.weight"] = part
        elif key == "lm_head.weight" and norm_head:
            out[key] = F.normalize(value.float(), dim=-1).to(value.dtype)  # NormHead: rows of unit L2 norm
        else:
            out[key] = value
    return out


def _sentencepiece(vocab_file: str):
    import sentencepiece as spm

    model = spm.SentencePieceProcessor()
    model.Load(vocab_file)
    return model


def load_tokenizer(path: str):
    cls = remote_class(path, "tokenization_baichuan.BaichuanTokenizer")
    preload_attribute(cls, "sp_model", _sentencepiece)
    return cls.from_pretrained(path)


def after_load(model):
    """Only for the checkpoint's own code (the 13B models; a converted 7B is a native LlamaForCausalLM).
    transformers 4.50 stopped PreTrainedModel inheriting GenerationMixin, and a remote class loaded by hand (or
    restored from the dynamic-module cache) keeps neither `generate` nor a generation config: give Baichuan's class
    the mixin (same name and module, so save_pretrained still writes its auto_map) and its generation_config.json."""
    from pathlib import Path

    from transformers import GenerationConfig, GenerationMixin

    if type(model).__module__.startswith("transformers.models."):
        return model
    # Not a transformers change but the checkpoint's own bug: configuration_baichuan.py stores
    # `gradient_checkpointing = (gradient_checkpointing,)`, a 1-tuple that is always truthy, so every training
    # forward recomputed every layer (and from_pretrained, seeing it set, enables checkpointing on its own)
    from unitune.families import read_config

    asked = read_config(model.config._name_or_path).get("gradient_checkpointing", False)
    if not asked and any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        model.gradient_checkpointing_disable()
    for module in model.modules():
        if isinstance(getattr(module, "gradient_checkpointing", None), tuple):
            module.gradient_checkpointing = bool(module.gradient_checkpointing[0])
    cls = type(model)
    if not isinstance(model, GenerationMixin):
        model.__class__ = type(cls.__name__, (cls, GenerationMixin), {"__module__": cls.__module__})
    if getattr(model, "generation_config", None) is None:
        source = Path(model.config._name_or_path or "")
        model.generation_config = (GenerationConfig.from_pretrained(source)
                                   if (source / "generation_config.json").is_file()
                                   else GenerationConfig.from_model_config(model.config))
    return model

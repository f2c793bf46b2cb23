"""Baichuan / Baichuan2 checkpoints. Baichuan2-13B (ALiBi positions, NormHead) has no native transformers
architecture: it runs its own modeling code (which loads and trains on transformers 5 as it is) with its own
sentencepiece tokenizer, patched for the transformers 5 change it predates.
"""

from __future__ import annotations

from unitune.families import preload_attribute, remote_class


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
    """transformers 4.50 stopped PreTrainedModel inheriting GenerationMixin, and a remote class loaded by hand (or
    restored from the dynamic-module cache) keeps neither `generate` nor a generation config: give Baichuan's class
    the mixin (same name and module, so save_pretrained still writes its auto_map) and its generation_config.json."""
    from pathlib import Path

    from transformers import GenerationConfig, GenerationMixin

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

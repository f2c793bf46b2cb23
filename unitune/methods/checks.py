"""Refusals shared by the method modules: checked from the flags alone, before the model is loaded.

Registers no method; the modules that do compose these into their Method.validate.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from unitune.errors import UnituneError

# config.json keys that hold the number of decoder layers, by family (llama, bloom / moss, chatglm)
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def check_quantization(method: str, spec, model_args, trains_base: bool = False) -> None:
    """--quantization_bit needs bitsandbytes, a family that loads in k bits, and frozen base weights."""
    bits = model_args.quantization_bit
    if not bits:
        return
    if trains_base:
        raise UnituneError(f"--peft_type {method} trains the base weights themselves, which cannot be done on a "
                           f"{bits}-bit base: drop --quantization_bit (or use lora / qlora)")
    if not spec.supports_kbit:
        raise UnituneError(f"--model_type {spec.name} cannot be loaded in {bits} bits: drop --quantization_bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UnituneError(f"--quantization_bit {bits} needs bitsandbytes: pip install bitsandbytes")


def check_gradient_checkpointing(method: str, spec, train_args, supported: bool = True, why: str = "") -> None:
    if train_args is None or not train_args.gradient_checkpointing:
        return
    if not supported:
        raise UnituneError(f"--peft_type {method} cannot be trained with --gradient_checkpointing{why}: drop it")
    if not spec.supports_gradient_checkpointing:
        raise UnituneError(f"--model_type {spec.name} does not support --gradient_checkpointing: drop it")


def check_targets(flag: str, names: list | None) -> None:
    if names is not None and (not names or any(not str(n).strip() for n in names)):
        raise UnituneError(f"--{flag}: module names must not be empty")


def check_frozen_base(method: str, spec, model_args, train_args) -> None:
    """What every method that leaves the base weights frozen must pass."""
    check_quantization(method, spec, model_args)
    check_gradient_checkpointing(method, spec, train_args)


def check_adapter(method: str, spec, model_args, peft_args, train_args) -> None:
    """LoRA and its variants."""
    check_frozen_base(method, spec, model_args, train_args)
    check_targets("lora_target_modules", peft_args.lora_target_modules)
    if peft_args.lora_r < 1:
        raise UnituneError(f"--lora_r must be at least 1, got {peft_args.lora_r}")
    if not 0.0 <= peft_args.lora_dropout < 1.0:
        raise UnituneError(f"--lora_dropout must be in [0, 1), got {peft_args.lora_dropout}")


def base_config(model_args) -> dict:
    """The base model's config.json as plain JSON (no torch import), {} where it cannot be read."""
    try:
        return json.loads((Path(model_args.base_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def num_layers(config: dict) -> int | None:
    for key in _LAYER_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return None

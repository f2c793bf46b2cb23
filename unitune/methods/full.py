"""Methods without an adapter: full fine-tuning and freeze (train only the last layers / named parameters).

full: every parameter trains and the result is a complete model directory (config, safetensors weights,
tokenizer, the checkpoint's own code for remote-code families), used afterwards AS the base:
`--model_name_or_path <output_dir>`. It needs no Method.load: there is nothing to put on a base.

freeze: only the chosen parameters train, and only they are saved (freeze_model.safetensors plus the
loader's unitune_adapter.json marker), so the result is small and goes back onto the same base with
`--adapter <output_dir>` (Method.load copies them into the base's parameters). Loading it already
gives the tuned weights, so merging it is just saving that model.
"""

from __future__ import annotations

import json
from pathlib import Path

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import (
    base_config,
    check_gradient_checkpointing,
    check_quantization,
    check_targets,
    num_layers,
)

MARKER_FILE = "unitune_adapter.json"  # the loader's OWN_ADAPTER_FILE: load_adapter dispatches on it
FREEZE_WEIGHTS = "freeze_model.safetensors"


def _upcast_half(params) -> None:
    # AdamW with fp16 loss scaling refuses to step fp16 weights, and bf16 weights lose small updates
    import torch

    for p in params:
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


# ------------------------------------------------------------------------------------------------- full
def validate_full(spec, model_args, peft_args, train_args=None) -> None:
    check_quantization("full", spec, model_args, trains_base=True)
    check_gradient_checkpointing("full", spec, train_args)


def build_full(model, spec, peft_args):
    import torch

    if next(model.parameters()).dtype == torch.float16:
        model.float()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_full(model, out: Path) -> None:
    model.config.use_cache = True  # training switched it off; whoever generates from this model wants it
    model.save_pretrained(out, safe_serialization=True)


# ----------------------------------------------------------------------------------------------- freeze
def decoder_layers(model) -> tuple[str, int]:
    """(name, length) of the model's stack of decoder layers: its longest ModuleList."""
    import torch

    best = ("", 0)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > best[1]:
            best = (name, len(module))
    if not best[1]:
        raise UnituneError(f"--peft_type freeze: no stack of decoder layers found in the {model.config.model_type} "
                           f"model; name the parameters to train with --freeze_trainable_modules")
    return best


def trainable_names(model, peft_args) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    if peft_args.freeze_trainable_modules:
        chosen = [n for n in names if any(m in n for m in peft_args.freeze_trainable_modules)]
        if not chosen:
            raise UnituneError(f"--freeze_trainable_modules {' '.join(peft_args.freeze_trainable_modules)}: no "
                               f"parameter of the {model.config.model_type} model has such a name")
        return chosen
    stack, count = decoder_layers(model)
    keep = peft_args.freeze_trainable_layers
    if keep > count:
        raise UnituneError(f"--freeze_trainable_layers {keep}: the model has only {count} decoder layers")
    prefixes = tuple(f"{stack}.{i}." for i in range(count - keep, count))
    return [n for n in names if n.startswith(prefixes)]


def validate_freeze(spec, model_args, peft_args, train_args=None) -> None:
    check_quantization("freeze", spec, model_args, trains_base=True)
    check_gradient_checkpointing("freeze", spec, train_args)
    check_targets("freeze_trainable_modules", peft_args.freeze_trainable_modules)
    if peft_args.freeze_trainable_modules:
        return
    if peft_args.freeze_trainable_layers < 1:
        raise UnituneError(f"--freeze_trainable_layers must be at least 1, got {peft_args.freeze_trainable_layers}")
    layers = num_layers(base_config(model_args))
    if layers is not None and peft_args.freeze_trainable_layers > layers:
        raise UnituneError(f"--freeze_trainable_layers {peft_args.freeze_trainable_layers}: "
                           f"{model_args.base_path} has only {layers} decoder layers")


def build_freeze(model, spec, peft_args):
    chosen = set(trainable_names(model, peft_args))
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    _upcast_half(p for p in model.parameters() if p.requires_grad)
    return model


def save_freeze(model, out: Path) -> None:
    from safetensors.torch import save_file

    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / FREEZE_WEIGHTS), metadata={"format": "pt"})
    marker = {"method": "freeze", "weights": FREEZE_WEIGHTS, "base_model": model.name_or_path,
              "parameters": len(tensors)}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2))


def load_freeze(model, adapter_dir: str, trainable: bool = False):
    import torch
    from safetensors.torch import load_file

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise UnituneError(f"{adapter_dir}: a freeze result replaces base weights and cannot go onto a quantized "
                           f"base: drop --quantization_bit")
    path = Path(adapter_dir) / FREEZE_WEIGHTS
    if not path.is_file():
        raise UnituneError(f"{adapter_dir}: no {FREEZE_WEIGHTS} (an incomplete freeze result)")
    saved = load_file(str(path))
    params = dict(model.named_parameters())
    for name, value in saved.items():
        if name not in params or params[name].shape != value.shape:
            raise UnituneError(f"{path}: parameter {name} does not fit the base model (was it trained on "
                               f"another base?)")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
    if trainable:
        for name, p in params.items():
            p.requires_grad_(name in saved)
        _upcast_half(p for p in params.values() if p.requires_grad)
    return model


register(Method("full", build_full, validate=validate_full, save=save_full,
                description="full fine-tuning: every weight trains; the result is a model used as the base"))
register(Method("freeze", build_freeze, validate=validate_freeze, load=load_freeze, save=save_freeze,
                description="train only the last --freeze_trainable_layers layers (or named parameters)"))

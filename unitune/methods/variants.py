"""LoRA variants through the `peft` library: QLoRA, DoRA and rsLoRA.

Each is LoRA with one thing fixed, so each reuses build_lora and saves as a plain peft LoRA adapter
(adapter_config.json says LORA; the loader reloads it as `lora`, and it merges like LoRA).
DoRA and rsLoRA are also plain flags on lora (--use_dora, --use_rslora); as methods they force them.
"""

from __future__ import annotations

import dataclasses
from functools import partial

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import check_adapter
from unitune.methods.lora import build_lora


def validate_qlora(spec, model_args, peft_args, train_args=None) -> None:
    # QLoRA is LoRA on a 4-bit base however the flags arrived (a --config without the preset included)
    if model_args.quantization_bit is None:
        model_args.quantization_bit = 4
    elif model_args.quantization_bit != 4:
        raise UnituneError(f"--peft_type qlora is LoRA on a 4-bit base, not --quantization_bit "
                           f"{model_args.quantization_bit}: for an 8-bit base use --peft_type lora "
                           f"--quantization_bit 8")
    check_adapter("qlora", spec, model_args, peft_args, train_args)


def build_qlora(model, spec, peft_args):
    if not getattr(model, "is_loaded_in_4bit", False):
        raise UnituneError("--peft_type qlora needs the base loaded in 4 bits: pass --quantization_bit 4")
    return build_lora(model, spec, peft_args)


def _forcing(flag: str):
    def build(model, spec, peft_args):
        return build_lora(model, spec, dataclasses.replace(peft_args, **{flag: True}))

    return build


register(Method("qlora", build_qlora, validate=validate_qlora,
                description="LoRA on a 4-bit NF4 base with double quantization (bitsandbytes + peft)"))
register(Method("dora", _forcing("use_dora"), validate=partial(check_adapter, "dora"),
                description="weight-decomposed LoRA: magnitude and direction trained apart (peft)"))
register(Method("rslora", _forcing("use_rslora"), validate=partial(check_adapter, "rslora"),
                description="rank-stabilized LoRA, scaled by alpha/sqrt(r) (peft)"))

"""LoRA through the `peft` library."""

from __future__ import annotations

from functools import partial

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import check_adapter


def lora_targets(model, spec, peft_args) -> list[str] | str:
    """The user's --lora_target_modules, else the model type's; each must name modules of the model."""
    targets = peft_args.lora_target_modules or list(spec.lora_targets)
    if not targets:
        return "all-linear"
    if targets in (["all"], ["all-linear"]):
        return "all-linear"
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                         if type(mod).__name__ in ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D")})
        raise UnituneError(f"--lora_target_modules {' '.join(missing)} not found in the {spec.name} model; "
                           f"its linear modules are: {' '.join(linear)}")
    return targets


def build_lora(model, spec, peft_args, **extra):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=peft_args.lora_r, lora_alpha=peft_args.lora_alpha,
                        lora_dropout=peft_args.lora_dropout, target_modules=lora_targets(model, spec, peft_args),
                        bias="none", task_type="CAUSAL_LM",
                        **{"use_dora": peft_args.use_dora, "use_rslora": peft_args.use_rslora, **extra})
    return get_peft_model(model, config)


register(Method("lora", build_lora, validate=partial(check_adapter, "lora"),
                description="low-rank adapters on the chosen linear modules (peft)"))

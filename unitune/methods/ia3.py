"""IA3 through the `peft` library: learned vectors rescaling attention and feed-forward activations.

Targets: --ia3_target_modules, else the model type's LoRA targets plus its feed-forward output module
(ModelSpec.ia3_feedforward); the feed-forward ones are scaled on their input, the others on their output.
"""

from __future__ import annotations

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import check_frozen_base, check_targets


def ia3_modules(model, spec, peft_args) -> tuple[list[str] | None, list[str] | None]:
    """(target_modules, feedforward_modules); (None, None) lets peft use its table for the architecture."""
    targets = peft_args.ia3_target_modules or [*spec.lora_targets, *spec.ia3_feedforward]
    if not targets:
        return None, None
    feedforward = peft_args.ia3_feedforward_modules
    if feedforward is None:
        feedforward = [m for m in spec.ia3_feedforward if m in targets]
    outside = [m for m in feedforward if m not in targets]
    if outside:
        raise UnituneError(f"--ia3_feedforward_modules {' '.join(outside)} must also be IA3 targets "
                           f"(--ia3_target_modules {' '.join(targets)})")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        flag = "--ia3_target_modules" if peft_args.ia3_target_modules else f"the {spec.name} IA3 targets"
        raise UnituneError(f"{flag}: {' '.join(missing)} not found in the model; pass --ia3_target_modules")
    return list(targets), list(feedforward)


def build_ia3(model, spec, peft_args):
    from peft import IA3Config, get_peft_model

    targets, feedforward = ia3_modules(model, spec, peft_args)
    try:
        config = IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
        return get_peft_model(model, config)
    except ValueError as err:  # peft has no default targets for this architecture
        raise UnituneError(f"--peft_type ia3 on {model.config.model_type}: {err}; "
                           f"pass --ia3_target_modules (and --ia3_feedforward_modules)") from None


def validate_ia3(spec, model_args, peft_args, train_args=None) -> None:
    check_frozen_base("ia3", spec, model_args, train_args)
    check_targets("ia3_target_modules", peft_args.ia3_target_modules)
    check_targets("ia3_feedforward_modules", peft_args.ia3_feedforward_modules)
    if peft_args.ia3_feedforward_modules and peft_args.ia3_target_modules:
        outside = set(peft_args.ia3_feedforward_modules) - set(peft_args.ia3_target_modules)
        if outside:
            raise UnituneError(f"--ia3_feedforward_modules {' '.join(sorted(outside))} must also be listed in "
                               f"--ia3_target_modules")


register(Method("ia3", build_ia3, validate=validate_ia3,
                description="IA3: learned scaling vectors on attention and feed-forward activations (peft)"))

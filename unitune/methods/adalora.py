"""AdaLoRA through the `peft` library, with its rank allocation actually run during training.

AdaLoRA starts every adapted matrix at --adalora_init_r and prunes the least important singular
triplets until the average rank is --adalora_target_r (Alpaca-CoT: --lora_r): warm-up for tinit
steps, a cubic budget decrease, then tfinal steps at the final budget. peft does the pruning in
`update_and_allocate(step)`, which must run every optimizer step after the gradients exist and
before they are zeroed; the Trainer's `on_optimizer_step` event is exactly that point
(backward -> clip -> optimizer.step() -> on_optimizer_step -> scheduler -> zero_grad).

The schedule needs the run's total step count, unknown when the model is wrapped (before the data is
read), so the wrapper starts with a placeholder and the callback sets the real schedule when the
Trainer starts; the saved adapter_config.json carries the real one and the final rank_pattern, from
which peft reloads the pruned (smaller) matrices.
"""

from __future__ import annotations

import logging
from functools import cache

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import check_frozen_base, check_targets
from unitune.methods.lora import lora_targets

log = logging.getLogger(__name__)


def target_rank(peft_args) -> int:
    return peft_args.adalora_target_r if peft_args.adalora_target_r is not None else peft_args.lora_r


def schedule(peft_args, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal): the flags, else 10% warm-up and 20% final steps of the run.

    The default keeps at least one final step where the run allows it: peft fixes the final budget
    at step total - tfinal, which a run with tfinal = 0 never reaches.
    """
    tinit = peft_args.adalora_tinit if peft_args.adalora_tinit is not None else int(0.1 * total_steps)
    if peft_args.adalora_tfinal is not None:
        tfinal = peft_args.adalora_tfinal
    else:
        tfinal = max(1, int(0.2 * total_steps)) if total_steps - tinit >= 2 else 0
    if tinit + tfinal >= total_steps:
        raise UnituneError(f"AdaLoRA: --adalora_tinit {tinit} + --adalora_tfinal {tfinal} leave no rank-allocation "
                           f"phase in a {total_steps}-step run: their sum must be less than the total steps "
                           f"(lower them, or train longer with --max_steps / --epochs)")
    return tinit, tfinal


def validate_adalora(spec, model_args, peft_args, train_args=None) -> None:
    check_frozen_base("adalora", spec, model_args, train_args)
    check_targets("lora_target_modules", peft_args.lora_target_modules)
    init_r, target_r = peft_args.adalora_init_r, target_rank(peft_args)
    if target_r < 1 or init_r <= target_r:
        raise UnituneError(f"AdaLoRA prunes ranks from --adalora_init_r down to --adalora_target_r (default "
                           f"--lora_r): need init_r > target_r >= 1, got {init_r} and {target_r}")
    if peft_args.adalora_delta_t < 1:
        raise UnituneError(f"--adalora_delta_t must be at least 1, got {peft_args.adalora_delta_t}")
    for flag in ("adalora_tinit", "adalora_tfinal"):
        value = getattr(peft_args, flag)
        if value is not None and value < 0:
            raise UnituneError(f"--{flag} must not be negative, got {value}")
    if train_args is not None and train_args.max_steps > 0:  # else the total is known once the data is read
        schedule(peft_args, train_args.max_steps)


def build_adalora(model, spec, peft_args):
    from peft import AdaLoraConfig, get_peft_model

    # total_step=2 with tinit=tfinal=0 only satisfies peft's check; AdaLoraAllocator sets the real schedule
    config = AdaLoraConfig(init_r=peft_args.adalora_init_r, target_r=target_rank(peft_args), tinit=0, tfinal=0,
                           deltaT=peft_args.adalora_delta_t, total_step=2, lora_alpha=peft_args.lora_alpha,
                           lora_dropout=peft_args.lora_dropout, target_modules=lora_targets(model, spec, peft_args),
                           task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def rank_budget(model) -> int:
    """Singular triplets currently alive (non-zero lora_E entries) across all adapted matrices."""
    return sum(int((p != 0).sum()) for n, p in model.named_parameters() if ".lora_E." in n)


@cache
def _allocator_class():
    from transformers import TrainerCallback  # heavy: only when a run needs the callback

    class AdaLoraAllocator(TrainerCallback):
        """Runs AdaLoRA's importance scoring and budget pruning after every optimizer step."""

        def __init__(self, peft_args, total_steps: int):
            self.peft_args = peft_args
            self.active = True
            schedule(peft_args, total_steps)  # refuse a bad schedule before the first step

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            config = model.peft_config[model.base_model.trainable_adapter_name]
            config.tinit, config.tfinal = schedule(self.peft_args, state.max_steps)
            config.total_step = state.max_steps
            allocator = model.base_model.rankallocator
            # a saved adapter trained further (--adapter) comes back already pruned: peft counted the budget
            # before resizing to the saved ranks, and would prune the survivors once more
            allocator.init_bgt = rank_capacity(model)
            self.active = allocator.init_bgt > allocator.target_bgt
            if not self.active:
                log.info("AdaLoRA: the adapter is already at its target budget of %d ranks", allocator.target_bgt)
                return
            log.info("AdaLoRA: %d ranks pruned toward %d over steps %d-%d of %d", allocator.init_bgt,
                     allocator.target_bgt, config.tinit, state.max_steps - config.tfinal, state.max_steps)

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            # after optimizer.step(), before zero_grad(): importance scores read the fresh gradients
            if self.active:
                model.base_model.update_and_allocate(state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            log.info("AdaLoRA: %d of %d ranks kept", rank_budget(model), rank_capacity(model))

    return AdaLoraAllocator


def rank_capacity(model) -> int:
    return sum(p.shape[0] for n, p in model.named_parameters() if ".lora_E." in n)


def adalora_callbacks(peft_args, total_steps: int) -> list:
    return [_allocator_class()(peft_args, total_steps)]


register(Method("adalora", build_adalora, validate=validate_adalora, callbacks=adalora_callbacks,
                description="AdaLoRA: SVD-form LoRA whose rank budget is pruned to the target during training (peft)"))

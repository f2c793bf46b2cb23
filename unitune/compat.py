"""Named work-arounds for changes in the libraries unitune builds on; each says which change it undoes.

Applied only where the change bites, so a later release that fixes it upstream needs one line removed here.
"""

from __future__ import annotations

import functools
from typing import Any


def cache_field() -> str:
    """The KV cache's name in model outputs and forward kwargs: transformers 5.24 renamed `past_key_values`
    to `cache` (the old name still works there, with a deprecation warning)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def fix_prompt_learning_generation(model: Any) -> Any:
    """peft 0.21 prompt learning + transformers >= 5.24 generate: peft reads and writes `past_key_values`
    while generate keeps its cache under `cache`, and `cache` wins. Prefix tuning then generates as if
    untuned, and p-/prompt tuning re-inject their prompt at every step. Speak the old name to peft and
    the new one to the model."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False) or cache_field() != "cache":
        return model
    if getattr(model, "_unitune_cache_names_fixed", False):
        return model
    base_prepare = model.base_model_prepare_inputs_for_generation
    peft_prepare = model.prepare_inputs_for_generation
    step = {"generate_has_cache": False}  # without a cache of generate's own (use_cache=False) nothing clashes

    @functools.wraps(base_prepare)  # generate() checks its kwargs against this signature
    def base_prepare_old_name(*args: Any, **kwargs: Any) -> dict:
        inputs = base_prepare(*args, **kwargs)
        step["generate_has_cache"] = "cache" in inputs
        if step["generate_has_cache"]:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    @functools.wraps(peft_prepare)
    def peft_prepare_new_name(*args: Any, **kwargs: Any) -> dict:
        inputs = peft_prepare(*args, **kwargs)
        if step["generate_has_cache"] and "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    model.base_model_prepare_inputs_for_generation = base_prepare_old_name
    model.prepare_inputs_for_generation = peft_prepare_new_name
    model._unitune_cache_names_fixed = True
    return model

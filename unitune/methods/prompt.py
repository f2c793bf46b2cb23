"""Prompt-learning methods through the `peft` library: prefix tuning, P-tuning and prompt tuning.

All three learn --num_virtual_tokens vectors in front of every input and leave the base untouched:
- prefix: key/value prefixes at every layer (optionally reparameterized by an MLP, --prefix_projection);
- p_tuning: input-embedding prompts produced by a small MLP or LSTM encoder;
- prompt: input-embedding prompts learned directly, from random vectors or a text's token embeddings.
None of them changes a weight, so none can be merged into the base (the loader refuses merge).
"""

from __future__ import annotations

import math

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import check_frozen_base, check_gradient_checkpointing

# --prompt_init text without --prompt_init_text: a generic instruction-following sentence (Alpaca's
# system prompt), which starts the prompt among embeddings of real words instead of random vectors
DEFAULT_INIT_TEXT = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.")


def _check_prompt_args(method: str, spec, model_args, peft_args, train_args) -> None:
    check_frozen_base(method, spec, model_args, train_args)
    if peft_args.num_virtual_tokens < 1:
        raise UnituneError(f"--num_virtual_tokens must be at least 1, got {peft_args.num_virtual_tokens}")
    size = peft_args.prompt_encoder_hidden_size
    if size is not None and size < 1:
        raise UnituneError(f"--prompt_encoder_hidden_size must be at least 1, got {size}")


def validate_prefix(spec, model_args, peft_args, train_args=None) -> None:
    if not spec.supports_prefix:
        raise UnituneError(f"--model_type {spec.name} does not support prefix tuning (its attention takes no "
                           f"past key/values prefix): use p_tuning or prompt")
    # the prefix enters as past key/values, which activation recomputation does not carry
    check_gradient_checkpointing("prefix", spec, train_args, supported=False,
                                 why=" (the prefix is passed as past key/values)")
    _check_prompt_args("prefix", spec, model_args, peft_args, train_args)


def validate_p_tuning(spec, model_args, peft_args, train_args=None) -> None:
    _check_prompt_args("p_tuning", spec, model_args, peft_args, train_args)


def validate_prompt(spec, model_args, peft_args, train_args=None) -> None:
    _check_prompt_args("prompt", spec, model_args, peft_args, train_args)
    if peft_args.prompt_init_text is not None and peft_args.prompt_init != "text":
        raise UnituneError("--prompt_init_text is used only with --prompt_init text")
    if peft_args.prompt_init_text is not None and not peft_args.prompt_init_text.strip():
        raise UnituneError("--prompt_init_text must not be empty")


def _hidden_size(model, peft_args) -> int | None:
    return peft_args.prompt_encoder_hidden_size or getattr(model.config, "hidden_size", None)


def _wrap(model, config):
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except (ValueError, AttributeError) as err:  # architectures peft cannot prompt
        raise UnituneError(f"--peft_type {config.peft_type.value.lower()} cannot wrap the "
                           f"{model.config.model_type} model: {err}") from None


def build_prefix(model, spec, peft_args):
    from peft import PrefixTuningConfig

    return _wrap(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft_args.num_virtual_tokens,
                                           prefix_projection=peft_args.prefix_projection,
                                           encoder_hidden_size=_hidden_size(model, peft_args)))


def build_p_tuning(model, spec, peft_args):
    from peft import PromptEncoderConfig

    return _wrap(model, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft_args.num_virtual_tokens,
                                            encoder_reparameterization_type=peft_args.p_tuning_encoder.upper(),
                                            encoder_hidden_size=_hidden_size(model, peft_args)))


def build_prompt(model, spec, peft_args):
    from peft import PromptTuningConfig

    # text init is done here rather than by peft, which would record the tokenizer path in the adapter
    # config and reload that tokenizer (possibly remote code) whenever the adapter is trained further
    wrapped = _wrap(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft_args.num_virtual_tokens,
                                              prompt_tuning_init="RANDOM"))
    if peft_args.prompt_init == "text":
        init_from_text(wrapped, peft_args.prompt_init_text or DEFAULT_INIT_TEXT)
    return wrapped


def init_from_text(peft_model, text: str) -> None:
    """Start the virtual tokens at the embeddings of `text`'s tokens (repeated to fill them)."""
    import torch
    from transformers import AutoTokenizer

    base = peft_model.get_base_model()
    # a model whose class came from the checkpoint's own code was loaded with --trust_remote_code
    remote = type(base).__module__.startswith("transformers_modules")
    tokenizer = AutoTokenizer.from_pretrained(base.name_or_path, trust_remote_code=remote)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UnituneError(f"--prompt_init_text {text!r} has no tokens")
    encoder = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    count = encoder.weight.shape[0]
    ids = (ids * math.ceil(count / len(ids)))[:count]
    words = peft_model.word_embeddings
    with torch.no_grad():
        vectors = words(torch.tensor(ids, device=words.weight.device))
        encoder.weight.copy_(vectors.to(encoder.weight.dtype))


register(Method("prefix", build_prefix, mergeable=False, packable=False, validate=validate_prefix, aliases=("prefix_tuning",),
                description="prefix tuning: learned key/value prefixes at every layer (peft)"))
register(Method("p_tuning", build_p_tuning, mergeable=False, packable=False, validate=validate_p_tuning,
                description="P-tuning: virtual-token embeddings from an MLP or LSTM prompt encoder (peft)"))
register(Method("prompt", build_prompt, mergeable=False, packable=False, validate=validate_prompt, aliases=("prompt_tuning",),
                description="prompt tuning: virtual-token embeddings learned directly (peft)"))

"""The bounds of every decoding option and limit, whether it arrives as a flag or in an API request.

One rule, two doors: web.py's request models (unitune/api_schema.py) are built from the types below,
and `check_flags` holds the flags of every front-end (fine-tune, generate.py, server.py, web.py) to the
same types right after parsing, before anything heavy is imported or a model loads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from unitune.errors import UnituneError

MAX_TOKENS_LIMIT = 1_000_000  # a sanity bound only: the real limit is the model's context window
# below this a temperature is greedy decoding: dividing logits by ~0 overflows them to inf (then NaN)
GREEDY_TEMPERATURE = 1e-5


def _not_zero(value: int) -> int:
    if value == 0:
        raise ValueError("0 steps trains nothing; give -1 (train by --epochs) or a positive count")
    return value


# ---- decoding: the same for a flag (--temperature) and a request field (temperature)
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=0, le=MAX_TOKENS_LIMIT)]
# tinier penalties blow logits up to inf
RepetitionPenalty = Annotated[float, Field(ge=0.01, le=10, allow_inf_nan=False)]
NumBeams = Annotated[int, Field(ge=1, le=8)]
NoRepeatNgram = Annotated[int, Field(ge=0, le=1024)]
PenaltyAlpha = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # OpenAI's int64, which torch.manual_seed takes
TopLogprobs = Annotated[int, Field(ge=0, le=20)]  # OpenAI's bound
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]

# ---- limits and training flags
Count = Annotated[int, Field(ge=1, le=2**31 - 1)]
NonNegativeCount = Annotated[int, Field(ge=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Dropout = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]

FLAG_RULES: dict[str, Any] = {
    # decoding (generate.py, server.py, web.py, evaluation)
    "temperature": Temperature, "top_p": TopP, "top_k": TopK, "num_beams": NumBeams,
    "repetition_penalty": RepetitionPenalty, "no_repeat_ngram_size": NoRepeatNgram, "penalty_alpha": PenaltyAlpha,
    "max_new_tokens": MaxTokens, "eval_max_new_tokens": MaxTokens,
    # limits of the front-ends
    "cutoff_len": Count, "max_queue": Count, "batch_size": Count, "max_samples": Count,
    "port": Annotated[int, Field(ge=0, le=65535)],
    # training
    "per_gpu_train_batch_size": Count, "gradient_accumulation_steps": Count, "epochs": PositiveFloat,
    "max_steps": Annotated[int, Field(ge=-1, le=2**31 - 1), AfterValidator(_not_zero)],
    "learning_rate": PositiveFloat, "warmup_ratio": Fraction, "weight_decay": NonNegativeFloat,
    "max_grad_norm": NonNegativeFloat, "save_steps": Count, "logging_steps": Count,
    "save_total_limit": NonNegativeCount, "seed": Annotated[int, Field(ge=0, le=2**32 - 1)],  # numpy's range
    "dataloader_num_workers": NonNegativeCount, "val_set_size": NonNegativeFloat, "eval_samples": NonNegativeCount,
    "lora_r": Count, "lora_alpha": PositiveFloat, "lora_dropout": Dropout, "num_virtual_tokens": Count,
    "bottleneck_size": Count, "adapter_dropout": Dropout,
}


def reason(message: str) -> str:
    """One of pydantic's complaints as the end of a sentence: 'must be greater than 0'."""
    if message.startswith("Value error, "):
        return message[len("Value error, "):]
    return message.replace("Input should be", "must be", 1)


@functools.cache
def _adapter(name: str) -> TypeAdapter:
    return TypeAdapter(FLAG_RULES[name])


def check_value(name: str, value: Any) -> None:
    """Raise a one-line UnituneError naming --name when `value` breaks its rule."""
    if value is None or name not in FLAG_RULES:
        return
    try:
        _adapter(name).validate_python(value)
    except ValidationError as err:
        raise UnituneError(f"--{name} {value}: {reason(err.errors()[0]['msg'])}") from None


def check_flags(*instances: Any) -> None:
    """Check every flag of these dataclass instances that has a rule."""
    for instance in instances:
        for f in dataclasses.fields(instance):
            check_value(f.name, getattr(instance, f.name))

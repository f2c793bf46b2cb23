"""The bounds of every decoding option and limit, whether it arrives as a flag or in an API request.

One rule, two doors: web.py's request models (unitune/api_schema.py) build their field types from RULES
(`Bound.annotated()`), and `check_flags` holds the flags of every front-end (fine-tune, generate.py,
server.py, web.py) to the same bounds right after parsing, before anything heavy is imported or a model
loads. Plain Python here: pydantic belongs to the [web] extra, the flags are checked without it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from unitune.errors import UnituneError

MAX_TOKENS_LIMIT = 1_000_000  # a sanity bound only: the real limit is the model's context window
# below this a temperature is greedy decoding: dividing logits by ~0 overflows them to inf (then NaN)
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Bound:
    """A number's range; messages use pydantic's words so a flag and a request field read the same."""

    kind: type  # int or float
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    extra: Callable[[Any], str | None] | None = None  # one more rule: a problem, or None

    def problem(self, value: Any) -> str | None:
        if self.kind is float and not math.isfinite(value):
            return "must be a finite number"
        for limit, words, broken in ((self.ge, "greater than or equal to", lambda b: value < b),
                                     (self.gt, "greater than", lambda b: value <= b),
                                     (self.le, "less than or equal to", lambda b: value > b),
                                     (self.lt, "less than", lambda b: value >= b)):
            if limit is not None and broken(limit):
                return f"must be {words} {limit}"
        return self.extra(value) if self.extra else None

    def annotated(self):
        """The pydantic type of a request field with this bound (imports pydantic: the web API only)."""
        from typing import Annotated

        from pydantic import AfterValidator, Field

        def check(value):
            if self.extra and (problem := self.extra(value)):
                raise ValueError(problem)
            return value

        finite = {"allow_inf_nan": False} if self.kind is float else {}
        return Annotated[self.kind, Field(ge=self.ge, gt=self.gt, le=self.le, lt=self.lt, **finite),
                         AfterValidator(check)]


def _not_zero(value: int) -> str | None:
    return "0 steps trains nothing; give -1 (train by --epochs) or a positive count" if value == 0 else None


INT64 = 2**63
COUNT = Bound(int, ge=1, le=2**31 - 1)
NON_NEGATIVE_COUNT = Bound(int, ge=0, le=2**31 - 1)
TOKENS = Bound(int, ge=1, le=MAX_TOKENS_LIMIT)
FRACTION = Bound(float, ge=0, le=1)
DROPOUT = Bound(float, ge=0, lt=1)

RULES: dict[str, Bound] = {
    # decoding: the flag --temperature and the request field temperature alike
    "temperature": Bound(float, ge=0, le=2), "top_p": Bound(float, gt=0, le=1),
    "top_k": Bound(int, ge=0, le=MAX_TOKENS_LIMIT),
    "repetition_penalty": Bound(float, ge=0.01, le=10),  # tinier penalties blow logits up to inf
    "num_beams": Bound(int, ge=1, le=8), "no_repeat_ngram_size": Bound(int, ge=0, le=1024),
    "penalty_alpha": Bound(float, ge=0, le=1), "max_new_tokens": TOKENS, "eval_max_new_tokens": TOKENS,
    # requests only
    "max_tokens": TOKENS, "seed": Bound(int, ge=-INT64, le=INT64 - 1),  # OpenAI's int64, which torch takes
    "top_logprobs": Bound(int, ge=0, le=20), "completion_logprobs": Bound(int, ge=0, le=5),  # OpenAI's bounds
    "penalty": Bound(float, ge=-2, le=2),
    # limits of the front-ends
    "cutoff_len": COUNT, "max_queue": COUNT, "max_batch_size": COUNT, "batch_size": COUNT, "max_samples": COUNT,
    "port": Bound(int, ge=0, le=65535),
    # training
    "per_gpu_train_batch_size": COUNT, "gradient_accumulation_steps": COUNT, "global_batch_size": COUNT,
    "epochs": Bound(float, gt=0),
    "max_steps": Bound(int, ge=-1, le=2**31 - 1, extra=_not_zero), "learning_rate": Bound(float, gt=0),
    "warmup_ratio": FRACTION, "weight_decay": Bound(float, ge=0), "max_grad_norm": Bound(float, ge=0),
    "save_steps": COUNT, "logging_steps": COUNT, "save_total_limit": NON_NEGATIVE_COUNT,
    "train_seed": Bound(int, ge=0, le=2**32 - 1),  # numpy's range: --seed of a fine-tune
    "dataloader_num_workers": NON_NEGATIVE_COUNT, "val_set_size": Bound(float, ge=0),
    "eval_samples": NON_NEGATIVE_COUNT, "lora_r": COUNT, "lora_alpha": Bound(float, gt=0), "lora_dropout": DROPOUT,
    "num_virtual_tokens": COUNT, "bottleneck_size": COUNT, "adapter_dropout": DROPOUT,
}
FLAG_RULE = {"seed": "train_seed"}  # flags whose rule is not the request field's of the same name


def check_value(name: str, value: Any, rule: str | None = None) -> None:
    """Raise a one-line UnituneError naming --name when `value` breaks its rule (RULES[rule or name])."""
    bound = RULES.get(rule or name)
    if value is None or bound is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    problem = bound.problem(value)
    if problem:
        raise UnituneError(f"--{name} {value}: {problem}")


def check_flags(*instances: Any) -> None:
    """Check every flag of these dataclass instances that has a rule."""
    for instance in instances:
        for f in dataclasses.fields(instance):
            check_value(f.name, getattr(instance, f.name), FLAG_RULE.get(f.name, f.name))

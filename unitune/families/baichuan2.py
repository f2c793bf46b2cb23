"""Baichuan2: Baichuan's checkpoint format (unitune.families.baichuan) with NormHead, which the 7B conversion folds
into lm_head; the 13B runs its own code as Baichuan's does."""

from __future__ import annotations

from functools import partial

from unitune.families import baichuan

after_load, load_tokenizer, native_config, variant = (baichuan.after_load, baichuan.load_tokenizer,
                                                      baichuan.native_config, baichuan.variant)
is_convertible = partial(baichuan.is_convertible, norm_head=True)
native_weights = partial(baichuan.native_weights, norm_head=True)

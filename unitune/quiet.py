"""Known-harmless third-party warnings, filtered at their source by message; unitune's own logs stay.

Each entry names who says it and why it is harmless for a unitune user, who can do nothing about it.
Installed once by every entry point (unitune.errors.run_cli) before the libraries are imported.
"""

from __future__ import annotations

import logging
import re
import warnings

# (logger name, message regex, why it is harmless)
LOG_NOISE = [
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community",
     "bitsandbytes looks for optional Hub-downloaded CPU kernels and falls back to its own"),
    ("transformers.utils.generic", r"`past_key_values`/`cache_params` are deprecated",
     "transformers 5.24 renamed the KV cache; peft and checkpoint code still use the old name, which works"),
    ("transformers.trainer_utils", r"mtime may not be reliable on this filesystem",
     "checkpoints written within one second sort by step number instead, which is what rotation wants"),
]
# (warning category, message regex, why)
WARNING_NOISE = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated",
     "peft 0.21 reads the old attribute name on every run; transformers still answers it"),
    (FutureWarning, r"Both `past_key_values` and `cache` are set",
     "peft's prompt learning passes both names; unitune.compat hands peft's value to `cache`"),
]


class _DropMessages(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


_installed = False


def install() -> None:
    """Idempotent: add the filters (loggers need not exist yet; the libraries get these same objects)."""
    global _installed
    if _installed:
        return
    _installed = True
    by_logger: dict[str, list[str]] = {}
    for name, pattern, _why in LOG_NOISE:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logging.getLogger(name).addFilter(_DropMessages(patterns))
    for category, pattern, _why in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=f".*{pattern}", category=category)

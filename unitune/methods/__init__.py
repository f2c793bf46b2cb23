"""The --peft_type registry: one small module per method family, presets as data in peft/*.yaml.

A method differs in behaviour (how it wraps a model, what it refuses, which callbacks it needs,
whether it merges, how it saves and reloads), so each is a `Method` object registered here.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from unitune.errors import UnituneError
from unitune.paths import asset_dir



def _no_check(*_args: Any, **_kwargs: Any) -> None:
    return None


def _no_callbacks(*_args: Any, **_kwargs: Any) -> list:
    return []


@dataclass(frozen=True)
class Method:
    """One PEFT method.

    build(model, spec, peft_args) -> trainable model; validate(spec, model_args, peft_args, train_args)
    raises UnituneError before anything is loaded; callbacks(peft_args, total_steps) -> Trainer callbacks;
    load(model, adapter_dir, trainable) -> model with the saved adapter (None: plain `peft` loads it).
    """

    name: str
    build: Callable[..., Any]
    mergeable: bool = True
    validate: Callable[..., None] = _no_check
    callbacks: Callable[..., list] = _no_callbacks
    load: Callable[..., Any] | None = None
    save: Callable[..., None] | None = None  # save(model, out_dir); None: model.save_pretrained (peft)
    packable: bool = True  # False: the method adds virtual tokens to every example, which packed rows cannot hold
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    for name in (method.name, *method.aliases):
        METHODS[name] = method
    return method


def _ensure_loaded() -> None:
    """Import every module of this package: each registers its methods, so a new family is one new file."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def preset_names() -> list[str]:
    return sorted(p.stem for p in asset_dir("peft").glob("*.yaml"))


def read_preset(name: str) -> dict:
    """The flag values of peft/<name>.yaml ({} when there is none); its `method` key names the method."""
    from unitune.args import load_yaml

    path = asset_dir("peft") / f"{name}.yaml"
    return load_yaml(str(path)) if path.is_file() else {}


def resolve_method(peft_type: str) -> tuple[Method, dict]:
    """--peft_type (a method or a preset name) -> the Method and the preset's flag values."""
    _ensure_loaded()
    preset = read_preset(peft_type)
    method_name = str(preset.pop("method", peft_type))
    if method_name not in METHODS:
        choices = sorted(set(METHODS) | set(preset_names()))
        where = f" (named by peft/{peft_type}.yaml)" if method_name != peft_type else ""
        raise UnituneError(f"unknown --peft_type {method_name!r}{where}; choose one of: {', '.join(choices)}")
    method = METHODS[method_name]
    if not preset and method.name != peft_type:  # an alias (prefix_tuning) takes its method's preset
        preset = read_preset(method.name)
        preset.pop("method", None)
    return method, preset

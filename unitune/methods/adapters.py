"""Bottleneck adapters (Alpaca-CoT / LLM-Adapters): SadapterH, SadapterP and the parallel P-adapter.

The `peft` library has no bottleneck adapter and cannot register one, so they live here.

- adapter_h (Houlsby): a sequential adapter after each layer's attention AND after its feed-forward;
- adapter_p (Pfeiffer): a sequential adapter after the feed-forward only;
- adapter_parallel (He et al.): an adapter beside the feed-forward, fed the feed-forward's input.

Sequential: out = h + s * up(act(down(dropout(h)))) on the module's output h (the first element when
it returns a tuple, as attention modules do). Parallel: out = module(x) + s * up(act(down(dropout(x)))).

Each adapter is a child module of the module it adapts (`...mlp.bottleneck_adapter.down.weight`) and
runs from a forward hook, so the base model's parameter names, class and `generate` stay untouched:
Trainer checkpoints, the KV cache and `save_pretrained` of the whole model keep working unchanged.
Saved as unitune_adapter.json (flags and the resolved module list) + adapter_model.safetensors.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from pathlib import Path

from unitune.errors import UnituneError
from unitune.methods import Method, register
from unitune.methods.checks import check_gradient_checkpointing, check_targets

log = logging.getLogger(__name__)

CONFIG_FILE = "unitune_adapter.json"  # the loader's OWN_ADAPTER_FILE: load_adapter dispatches on it
WEIGHTS_FILE = "adapter_model.safetensors"
CHILD = "bottleneck_adapter"  # attribute name of the adapter inside the module it adapts
# method -> (sequential | parallel, which of the ModelSpec's per-layer modules get one by default)
KINDS = {"adapter_h": ("sequential", ("attention", "mlp")),
         "adapter_p": ("sequential", ("mlp",)),
         "adapter_parallel": ("parallel", ("mlp",))}


def parse_scaling(value) -> float | str:
    """--adapter_scaling: a float, or 'learned' (a trainable scalar per adapter, starting at 1)."""
    if str(value).strip().lower() == "learned":
        return "learned"
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UnituneError(f"--adapter_scaling {value!r}: expected a number or 'learned'") from None


def check_flags(peft_args) -> None:
    """The adapter flags alone (also re-checked on a saved unitune_adapter.json)."""
    if peft_args.bottleneck_size < 1:
        raise UnituneError(f"--bottleneck_size must be at least 1, got {peft_args.bottleneck_size}")
    if not 0.0 <= peft_args.adapter_dropout < 1.0:
        raise UnituneError(f"--adapter_dropout must be in [0, 1), got {peft_args.adapter_dropout}")
    parse_scaling(peft_args.adapter_scaling)
    if peft_args.adapter_init not in ("bert", "zero_up"):
        raise UnituneError(f"--adapter_init {peft_args.adapter_init!r}: choose bert or zero_up")
    if peft_args.adapter_non_linearity not in ("relu", "tanh", "gelu", "silu"):
        raise UnituneError(f"--adapter_non_linearity {peft_args.adapter_non_linearity!r}: "
                           f"choose relu, tanh, gelu or silu")
    check_targets("adapter_targets", peft_args.adapter_targets)


def validate(method_name: str, spec, model_args, peft_args, train_args=None) -> None:
    check_flags(peft_args)
    if model_args.quantization_bit:
        # transformers' Trainer refuses a quantized base unless the trainable part is a `peft` model
        raise UnituneError(f"--peft_type {method_name} trains on an unquantized base only (the Trainer takes a "
                           f"k-bit base only under `peft` adapters): drop --quantization_bit")
    check_gradient_checkpointing(method_name, spec, train_args)


@functools.cache  # one class per process, built on first use so importing this module needs no torch
def _bottleneck_class():
    import torch
    from torch import nn
    from transformers.activations import ACT2FN

    class Bottleneck(nn.Module):
        """down -> act -> up, scaled; its forward hook adds it to the output of the module that holds it."""

        def __init__(self, in_features: int, out_features: int, cfg: dict, kind: str, residual_at: int | None):
            super().__init__()
            self.kind, self.residual_at = kind, residual_at
            self.dropout = nn.Dropout(cfg["adapter_dropout"]) if cfg["adapter_dropout"] > 0 else nn.Identity()
            self.down = nn.Linear(in_features, cfg["bottleneck_size"], bias=False)  # LLM-Adapters: no biases
            self.act = ACT2FN[cfg["adapter_non_linearity"]]
            self.up = nn.Linear(cfg["bottleneck_size"], out_features, bias=False)
            scaling = parse_scaling(cfg["adapter_scaling"])
            if scaling == "learned":
                self.scale = nn.Parameter(torch.ones(1))
            else:
                self.scale = scaling
            # BERT-style init as in LLM-Adapters; zero_up makes the adapted model start as the base model
            nn.init.normal_(self.down.weight, std=0.02)
            if cfg["adapter_init"] == "zero_up":
                nn.init.zeros_(self.up.weight)
            else:
                nn.init.normal_(self.up.weight, std=0.02)

        def delta(self, x):
            # adapters stay float32 (like peft's adapters) so a half-precision base still trains them stably
            out = self.up(self.act(self.down(self.dropout(x.to(self.down.weight.dtype)))))
            return (out * self.scale).to(x.dtype)

        def hook(self, module, args, kwargs, output):
            first = output[0] if isinstance(output, tuple) else output
            if self.kind == "parallel":
                x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
                new = first + self.delta(x)
            else:
                h = first
                if self.residual_at is not None:  # BLOOM's blocks add the residual inside the module
                    residual = args[self.residual_at] if len(args) > self.residual_at else kwargs["residual"]
                    h = first - residual
                new = first + self.delta(h)
            return (new, *output[1:]) if isinstance(output, tuple) else new

    return Bottleneck


def _residual_position(module) -> int | None:
    """Index of a `residual` argument of module.forward: such modules return sublayer + residual, and the
    adapter must see the sublayer's output alone (Houlsby's placement, before the residual sum)."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("residual") if "residual" in params else None


def _features(model, module, kind: str) -> tuple[int, int]:
    """(in, out) widths of the adapter: a linear layer's own, else the model's hidden size."""
    in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_f is None or out_f is None:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        in_f = out_f = config.hidden_size
    return (in_f, out_f) if kind == "parallel" else (out_f, out_f)


def resolve_targets(model, spec, method_name: str, targets: list[str] | None) -> list[str]:
    """Full names of the modules that get an adapter; a target the model lacks is refused with the choices."""
    kind, default = KINDS[method_name]
    wanted = list(targets) if targets else [getattr(spec, part) for part in default]
    names = [name for name, _ in model.named_modules() if name and f".{CHILD}" not in f".{name}"]
    found, missing = set(), []
    for target in wanted:
        hits = {n for n in names if n == target or n.endswith("." + target)}
        if not hits:
            missing.append(target)
        found |= hits
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        flag = "--adapter_targets" if targets else f"the {spec.name} model type's {kind} adapter modules"
        raise UnituneError(f"{flag}: {' '.join(missing)} not found in the model; its modules are: "
                           f"{' '.join(leaves)}")
    return [n for n in names if n in found]


def attach(model, method_name: str, modules: list[str], cfg: dict):
    """Add one adapter per module (float32, on the module's device) and hook it into the forward pass."""
    import torch

    kind, _ = KINDS[method_name]
    Bottleneck = _bottleneck_class()
    for name in modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UnituneError(f"module {name} of the saved adapter is not in this model (trained on another "
                               f"base?)") from None
        if hasattr(module, CHILD):
            raise UnituneError(f"{name} already has a bottleneck adapter")
        in_f, out_f = _features(model, module, kind)
        adapter = Bottleneck(in_f, out_f, cfg, kind, _residual_position(module) if kind == "sequential" else None)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        module.add_module(CHILD, adapter.to(device=device, dtype=torch.float32))
        module.register_forward_hook(adapter.hook, with_kwargs=True)
    return model


def _config(method_name: str, peft_args, modules: list[str]) -> dict:
    return {"method": method_name, "kind": KINDS[method_name][0], "bottleneck_size": peft_args.bottleneck_size,
            "adapter_non_linearity": peft_args.adapter_non_linearity, "adapter_dropout": peft_args.adapter_dropout,
            "adapter_scaling": str(peft_args.adapter_scaling), "adapter_init": peft_args.adapter_init,
            "adapter_targets": list(peft_args.adapter_targets) if peft_args.adapter_targets else None,
            "modules": modules}


def _set_trainable(model, trainable: bool) -> None:
    model.requires_grad_(False)
    if trainable:
        for name, param in model.named_parameters():
            if f".{CHILD}." in f".{name}":
                param.requires_grad_(True)


def build(method_name: str, model, spec, peft_args):
    check_flags(peft_args)
    modules = resolve_targets(model, spec, method_name, peft_args.adapter_targets)
    cfg = _config(method_name, peft_args, modules)
    attach(model, method_name, modules, cfg)
    _set_trainable(model, True)
    model.unitune_adapter_config = cfg  # save() writes it next to the weights
    log.info("%s: %d bottleneck adapters (%s) on %s", method_name, len(modules), cfg["kind"],
             ", ".join(sorted({m.rsplit(".", 1)[-1] for m in modules})))
    return model


def adapter_state_dict(model) -> dict:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if f".{CHILD}." in f".{k}"}


def save(model, out_dir) -> None:
    from safetensors.torch import save_file

    cfg = getattr(model, "unitune_adapter_config", None)
    if cfg is None:
        raise UnituneError("this model carries no bottleneck adapter to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))


def load(model, adapter_dir, trainable: bool = False):
    from types import SimpleNamespace

    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        method_name, modules = cfg["method"], list(cfg["modules"])
    except (OSError, ValueError, KeyError) as err:
        raise UnituneError(f"{folder / CONFIG_FILE}: unreadable adapter config ({err})") from None
    if method_name not in KINDS:
        raise UnituneError(f"{folder / CONFIG_FILE}: method {method_name!r} is not a bottleneck adapter")
    check_flags(SimpleNamespace(**{k: cfg[k] for k in ("bottleneck_size", "adapter_dropout",
             "adapter_scaling", "adapter_init", "adapter_non_linearity", "adapter_targets")}))
    if not (folder / WEIGHTS_FILE).is_file():
        raise UnituneError(f"{folder}: no {WEIGHTS_FILE}")
    attach(model, method_name, modules, cfg)
    weights = load_file(str(folder / WEIGHTS_FILE))
    expected = set(adapter_state_dict(model))
    if set(weights) != expected:
        raise UnituneError(f"{folder / WEIGHTS_FILE}: weights do not match {CONFIG_FILE} "
                           f"({len(set(weights) ^ expected)} names differ)")
    model.load_state_dict(weights, strict=False)
    _set_trainable(model, trainable)
    model.unitune_adapter_config = cfg
    return model


def _method(name: str, description: str) -> Method:
    return Method(name, lambda model, spec, peft_args: build(name, model, spec, peft_args), mergeable=False,
                  validate=lambda spec, model_args, peft_args, train_args=None: validate(
                      name, spec, model_args, peft_args, train_args),
                  load=load, save=save, description=description)


register(_method("adapter_h", "Houlsby bottleneck adapters after each attention and feed-forward (SadapterH)"))
register(_method("adapter_p", "Pfeiffer bottleneck adapters after each feed-forward (SadapterP)"))
register(_method("adapter_parallel", "bottleneck adapters beside each feed-forward (parallel P-adapter)"))

"""THE loader: every front-end (train, generate, merge, chat, web, eval) gets its model here."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unitune.distributed import device_for_this_process
from unitune.errors import UnituneError
from unitune.models import ModelSpec, detect_model_spec, for_checkpoint, get_model_spec
from unitune.templates import Template, get_template

log = logging.getLogger(__name__)

_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}
_warned: set = set()  # (--model_type, checkpoint) pairs already warned about
OWN_ADAPTER_FILE = "unitune_adapter.json"  # adapters the `peft` library cannot hold (bottleneck ...)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    spec: ModelSpec
    template: Template
    method: Any = None  # the Method that wrapped or loaded the model, if any


def check_model_args(model_args) -> ModelSpec:
    """Everything about the model flags that can be checked before torch is imported."""
    from unitune import families

    spec = get_model_spec(model_args.model_type)
    path = Path(model_args.base_path)
    if not path.is_dir():
        raise UnituneError(f"--model_name_or_path {path}: no such model directory (no model hub is used)")
    config = families.read_config(path, required=False)
    config_type = config.get("model_type")
    detected = detect_model_spec(config, str(path)) if config else None
    if spec.name == "auto":  # a checkpoint in a registered family's own format gets that family's entry
        spec = detected or spec
    elif spec.config_types and config_type is not None and config_type not in spec.config_types:
        raise UnituneError(f"--model_type {spec.name}: {path} is a {config_type!r} checkpoint (config.json "
                           f"model_type), not one of {', '.join(spec.config_types)}; pass its own --model_type or auto")
    elif (detected is not None and detected.name != spec.name and spec.config_types[:1] == detected.config_types[:1]
          and (spec.name, str(path)) not in _warned):
        _warned.add((spec.name, str(path)))
        log.warning("--model_type %s: %s looks like a %s checkpoint (template %s); pass --model_type %s (or auto) "
                    "for its chat format", spec.name, path, detected.name, detected.template, detected.name)
    native_already = config_type is not None and config_type in spec.config_types[1:]
    spec = for_checkpoint(spec, native_already or families.converts(spec.family, str(path)))
    code = families.checkpoint_code(spec.family, str(path))
    if code and not model_args.trust_remote_code:
        raise UnituneError(f"--model_type {spec.name}: {path} runs its own Python code ({' and '.join(code)}): "
                           f"pass --trust_remote_code to allow it")
    if model_args.adapter and not Path(model_args.adapter).is_dir():
        raise UnituneError(f"--adapter {model_args.adapter}: no such adapter directory")
    name = model_args.template or spec.template
    if name and name != "hf":  # "hf" and an entry naming none are resolved once the tokenizer is loaded
        get_template(name)
    return spec


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16): there bf16 runs at 2-7x the fp32
    matmul peak; elsewhere it is emulated and slower than fp32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, check, lambda: False)() for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve_dtype(name: str, mode: str = "infer"):
    """--compute_dtype auto: bf16 on GPUs that have it (else fp16); on a CPU, bf16 for training where the CPU
    has native bf16 (the frozen base in bf16, trainable weights float32, autocast), float32 for inference,
    whose greedy answers should not depend on the machine."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "train" and cpu_has_native_bf16() else torch.float32
    return getattr(torch, _DTYPES[name])


def autocast_for(model):
    """The autocast the Trainer trains under, for forwards outside it (the packing check, the tuned model's
    answers): a bf16 / fp16 base with float32 trained weights mixes dtypes only autocast reconciles."""
    import contextlib

    import torch

    params = list(model.parameters())
    dtypes = {p.dtype for p in params}
    half = next((d for d in (torch.bfloat16, torch.float16) if d in dtypes), None)
    if half is None or dtypes == {half}:
        return contextlib.nullcontext()
    return torch.autocast(params[0].device.type, dtype=half)


def load_tokenizer(model_args, spec: ModelSpec, padding_side: str):
    from transformers import AutoTokenizer

    from unitune import families

    tok = families.load_tokenizer(spec.family, model_args.base_path)
    if tok is None:
        tok = AutoTokenizer.from_pretrained(model_args.base_path, trust_remote_code=model_args.trust_remote_code)
    if tok.eos_token_id is None:
        raise UnituneError(f"{model_args.base_path}: the tokenizer has no eos token")
    if tok.pad_token_id is None:
        if spec.pad_fix == "unk" and tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _quantization_config(model_args, dtype):
    if not model_args.quantization_bit:
        return None
    from transformers import BitsAndBytesConfig

    if model_args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=model_args.double_quant,
                              bnb_4bit_quant_type=model_args.quant_type)


def load_adapter(model, adapter_dir: str, trainable: bool = False):
    """Put a saved adapter of any registered kind onto `model`; an adapter whose shapes do not fit the base is
    one line naming both, never torch's size-mismatch listing."""
    try:
        return _load_adapter(model, adapter_dir, trainable)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line and ":" in line), "")
        base = getattr(model.config, "_name_or_path", "") or "the base model"
        recorded = ""
        config_file = Path(adapter_dir) / "unitune_config.yaml"
        if config_file.is_file():
            from unitune.args import load_yaml

            trained_on = load_yaml(str(config_file)).get("model_name_or_path") or "the embedded default model"
            recorded = f"; it was trained on {trained_on}"
        raise UnituneError(f"--lora_dir {adapter_dir} does not fit the base {base}: {first[:200]}{recorded} "
                           f"(pass that base with --model_name_or_path)") from None


def _load_adapter(model, adapter_dir: str, trainable: bool = False):
    from unitune.methods import resolve_method

    own = Path(adapter_dir) / OWN_ADAPTER_FILE
    if own.is_file():
        method, _ = resolve_method(json.loads(own.read_text())["method"])
        return method.load(model, adapter_dir, trainable=trainable), method
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        if (Path(adapter_dir) / "config.json").is_file():  # a full fine-tune's output is a whole model
            raise UnituneError(f"{adapter_dir} is a complete model (e.g. from --peft_type full), not an adapter: "
                               f"pass it as --model_name_or_path")
        raise UnituneError(f"{adapter_dir}: not an adapter directory (no adapter_config.json or {OWN_ADAPTER_FILE})")
    from peft import PeftModel

    peft_type = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("peft_type", "lora")
    method, _ = resolve_method(str(peft_type).lower())
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable), method


def load_tokenizer_and_template(model_args, mode: str = "train") -> tuple[Any, Template]:
    """The tokenizer and prompt template alone: training tokenizes its data with them before the model loads."""
    from unitune.chat_templates import resolve as resolve_template

    spec = check_model_args(model_args)
    tokenizer = load_tokenizer(model_args, spec, padding_side="right" if mode == "train" else "left")
    return tokenizer, resolve_template(model_args.template, spec.template, tokenizer)


def load(model_args, mode: str = "infer", peft_args=None, train_args=None) -> Loaded:
    """Load tokenizer and model for `mode`:

    - "train": base (quantized if asked) wrapped by the --peft_type method, ready for the Trainer;
    - "infer": base (quantized if asked) plus --adapter if given, in eval mode;
    - "merge": the UNquantized base with --adapter merged into its weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if mode not in ("train", "infer", "merge"):
        raise ValueError(f"unknown mode {mode!r}")
    spec = check_model_args(model_args)
    tokenizer, template = load_tokenizer_and_template(model_args, mode)
    dtype = resolve_dtype(model_args.compute_dtype, mode)
    quant = None if mode == "merge" else _quantization_config(model_args, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model_args.trust_remote_code}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device_for_this_process()}  # each torchrun process on its own GPU
    log.info("loading %s (%s, %s%s) for %s", model_args.base_path, spec.name, dtype,
             f", {model_args.quantization_bit}-bit" if quant else "", mode)
    from unitune import families

    source = families.model_source(spec.family, model_args.base_path)
    if source != model_args.base_path:
        log.info("%s loads as native transformers %s (converted in %s)", model_args.base_path, spec.family, source)
        kwargs["trust_remote_code"] = False  # the conversion runs none of the checkpoint's code
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.config._name_or_path = model_args.base_path  # adapters record the checkpoint, not the conversion cache
    model = families.after_load(spec.family, model)
    # a transformers 5 config only has the fields its class declares: remote configs may lack pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if quant is None and torch.cuda.is_available():
        model = model.to(device_for_this_process())
    from unitune.guards import check_finite_weights

    check_finite_weights(model, model_args.base_path)

    method = None
    if mode == "train":
        from unitune.methods import resolve_method

        method, _ = resolve_method(peft_args.peft_type)
        model.config.use_cache = False
        gc = bool(train_args and train_args.gradient_checkpointing)
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
            # bitsandbytes repacks 4-bit CPU weights at the first eval-mode forward (a validation pass) into
            # a layout whose matmul has no backward: later training steps would silently lose gradients
            for module in model.modules():
                if getattr(module, "support_avx512bf16_for_cpu", False):
                    module.support_avx512bf16_for_cpu = False
        elif gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        if model_args.adapter:  # continue training a saved adapter
            model, method = load_adapter(model, model_args.adapter, trainable=True)
        else:
            model = method.build(model, spec, peft_args)
    elif model_args.adapter:
        model, method = load_adapter(model, model_args.adapter)
        if mode == "merge":
            if not method.mergeable:
                raise UnituneError(f"{model_args.adapter}: a {method.name} adapter cannot be merged into the "
                                   f"base weights; load it with --adapter instead")
            if hasattr(model, "merge_and_unload"):  # freeze: loading already wrote the base weights
                model = model.merge_and_unload()
    from unitune.compat import fix_prompt_learning_generation

    model = fix_prompt_learning_generation(model)
    if mode != "train":
        model.eval()
    return Loaded(model, tokenizer, spec, template, method)

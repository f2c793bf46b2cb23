"""merge.py: fold a mergeable adapter into its base and save a model directory plain transformers loads.

    python merge.py --lora_dir output/llama-lora --merged_dir output/llama-merged

The base is always reloaded UNquantized (also for an adapter trained with QLoRA on a 4-bit base): 4-bit
weights cannot hold a merged update. The result is checked before it is published: the saved directory,
reloaded with plain `AutoModelForCausalLM`, must give the same logits as base + adapter (unmerged) on a
few prompts, within --tolerance. It is written to a temporary directory next to --merged_dir and renamed
only when that check passes, so a failed or interrupted merge never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from unitune import args as A
from unitune.errors import UnituneError

log = logging.getLogger("unitune")

# Largest |logit difference| accepted by default. In fp32 merging is exact up to summation order; in half
# precision the merged weights W + BA are rounded once more than the unmerged path computes them.
DEFAULT_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 2e-1}
CHECK_INSTRUCTIONS = [
    ("Give three tips for staying healthy.", ""),
    ("What is 12 plus 30? Answer with a number.", ""),
    ("Translate the sentence into English.", "今天天气很好，我们去公园散步吧。"),
    ("Summarize the text in one sentence.", "The quick brown fox jumps over the lazy dog. The dog sleeps on."),
]


@dataclass
class MergeArgs:
    merged_dir: Optional[str] = A.flag(None, "where the merged model directory is written",
                                       aliases=("--output_dir", "--export_dir"))
    tolerance: Optional[float] = A.flag(None, "largest |logit difference| between merged and base+adapter "
                                        "accepted; default 1e-3 (fp32), 5e-2 (fp16), 2e-1 (bf16)")
    max_shard_size: str = A.flag("2GB", "largest safetensors shard", aliases=("--export_size",))
    overwrite: bool = A.flag(False, "replace an existing non-empty --merged_dir")


GROUPS = [A.ModelArgs, MergeArgs]


def parse(argv: list[str] | None):
    (model_args, merge_args), _ = A.parse(GROUPS, argv, prog="merge.py",
                                          description="Merge an adapter into its base model and save the result.")
    if not model_args.adapter:
        raise UnituneError("merge.py: give the adapter to merge with --lora_dir DIR")
    if not merge_args.merged_dir:
        raise UnituneError("merge.py: give the output directory with --merged_dir DIR")
    if merge_args.tolerance is not None and merge_args.tolerance < 0:
        raise UnituneError(f"--tolerance must be >= 0, got {merge_args.tolerance}")
    return model_args, merge_args


def check_mergeable(adapter_dir: str) -> None:
    """Refuse, before any model is loaded, an adapter whose method has no weights to fold into the base."""
    from unitune.loader import OWN_ADAPTER_FILE
    from unitune.methods import resolve_method

    own, peft_config = Path(adapter_dir) / OWN_ADAPTER_FILE, Path(adapter_dir) / "adapter_config.json"
    if own.is_file():
        name = str(json.loads(own.read_text(encoding="utf-8")).get("method", ""))
    elif peft_config.is_file():
        name = str(json.loads(peft_config.read_text(encoding="utf-8")).get("peft_type", "lora")).lower()
    else:
        raise UnituneError(f"{adapter_dir}: not an adapter directory (no adapter_config.json or {OWN_ADAPTER_FILE})")
    try:
        method, _ = resolve_method(name)
    except UnituneError:
        method = None
    if method is not None and method.mergeable:
        return
    if method is None and own.is_file():
        raise UnituneError(f"{adapter_dir}: adapter method {name!r} is not registered")
    if method is None:
        from peft import PeftConfig

        if not PeftConfig.from_pretrained(adapter_dir).is_prompt_learning:
            return  # a peft method we do not register: let peft's merge_and_unload decide
    raise UnituneError(f"{adapter_dir}: a {name} adapter cannot be merged into the base weights (it is no weight "
                       f"update); load it with --adapter instead")


def check_target(target: Path, model_args, overwrite: bool) -> None:
    for other, what in ((model_args.adapter, "--lora_dir"), (model_args.base_path, "--model_name_or_path")):
        if target.resolve() == Path(other).resolve():
            raise UnituneError(f"--merged_dir {target} is the {what} directory; choose a new directory")
    if target.exists() and not target.is_dir():
        raise UnituneError(f"--merged_dir {target} is a file")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UnituneError(f"--merged_dir {target} exists and is not empty; pass --overwrite to replace it")
    from unitune.writable import check_output_dir

    check_output_dir(target, "--merged_dir")  # under a file, or where nobody may write: one line, now


def check_inputs(tokenizer, template) -> list:
    import torch

    prompts = [template.prompt_for(instruction, input) for instruction, input in CHECK_INSTRUCTIONS]
    return [torch.tensor([tokenizer(p)["input_ids"][:128]]) for p in prompts]


def all_logits(model, inputs: list) -> list:
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in inputs]


def release_memory() -> None:
    """Return the memory of models already dropped, so only one model is held at a time."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def publish(tmp: Path, target: Path) -> None:
    """Rename the finished temporary directory to --merged_dir (replacing an old one only now)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def merge(model_args, merge_args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from unitune.loader import check_model_args, load, resolve_dtype

    check_model_args(model_args)
    check_mergeable(model_args.adapter)
    target = Path(merge_args.merged_dir)
    check_target(target, model_args, merge_args.overwrite)
    if model_args.quantization_bit:
        log.info("the adapter is merged into the UNquantized base (a %d-bit base cannot hold merged weights)",
                 model_args.quantization_bit)
    plain = dataclasses.replace(model_args, quantization_bit=None)
    dtype = resolve_dtype(plain.compute_dtype)
    tolerance = merge_args.tolerance
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE.get(str(dtype).replace("torch.", ""), 1e-3)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.merging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged = load(plain, mode="merge")  # the loader refuses methods that cannot merge
        merged.model.save_pretrained(tmp, max_shard_size=merge_args.max_shard_size)
        from unitune.chat_templates import to_jinja

        # the template it was trained with, as the tokenizer's chat_template: any server prompts it the same way
        merged.tokenizer.chat_template = to_jinja(merged.template, merged.tokenizer)
        merged.tokenizer.save_pretrained(tmp)
        inputs = check_inputs(merged.tokenizer, merged.template)
        del merged
        release_memory()

        reference = load(plain, mode="infer")  # base + adapter, unmerged
        expected = all_logits(reference.model, inputs)
        del reference
        release_memory()

        # what a user gets: the saved directory through plain transformers, no unitune, no peft
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, trust_remote_code=plain.trust_remote_code)
        if torch.cuda.is_available():
            reloaded = reloaded.to("cuda")
        got = all_logits(reloaded.eval(), inputs)
        del reloaded
        release_memory()
        diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
        log.info("merge check: largest |logit difference| merged vs base+adapter = %.3g (tolerance %.3g, "
                 "%d prompts, %s)", diff, tolerance, len(inputs), str(dtype).replace("torch.", ""))
        if not diff <= tolerance:  # also catches NaN
            raise UnituneError(f"merge check failed: merged model differs from base + adapter by {diff:.3g} in "
                               f"the logits (tolerance {tolerance:.3g}); nothing was written to {target}")
        publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in target.iterdir())
    log.info("merged model saved to %s (%s)", target, ", ".join(files))
    return {"merged_dir": str(target), "max_logit_diff": diff, "tolerance": tolerance, "files": files}


def run(argv: list[str] | None = None) -> dict:
    model_args, merge_args = parse(argv)
    from unitune.train import setup_logging

    setup_logging()
    return merge(model_args, merge_args)

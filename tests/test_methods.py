"""Every --peft_type the `peft` library provides (and full / freeze), on tiny models of the registered families.

For each (family, method, bits) combination: a few optimizer steps through the real Trainer (with the
method's callbacks) lower the loss on a fixed batch, the result saves like uniform_finetune.py saves it,
and the shared loader reloads it in a FRESH process with the trained model's logits and greedy tokens.
The fresh-process reload runs once, for every combination this session selected (see `trained`).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from unitune import train  # noqa: E402
from unitune.args import ModelArgs, PeftArgs, TrainArgs  # noqa: E402
from unitune.errors import UnituneError  # noqa: E402
from unitune.methods import resolve_method  # noqa: E402
from unitune.methods.adapters import KINDS as ADAPTER_KINDS  # noqa: E402
from unitune.models import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["lora", "qlora", "adalora", "prefix", "p_tuning", "prompt", "dora", "rslora", "ia3", "full", "freeze",
           "adapter_h", "adapter_p", "adapter_parallel"]
FAMILIES = ["llama", "chatglm", "bloom", "moss", "internlm", "internlm2", "baichuan", "baichuan2", "qwen2", "mistral"]
DEFAULT_FAMILIES = ("llama", "bloom")
STEPS = 4
PROMPT = "### Instruction:\nAdd the numbers.\n\n### Input:\n3 4\n\n### Response:\n"
RECORDS = [{"instruction": "Add the numbers.", "input": f"{a} {b}", "output": f"{a} + {b} = {a + b}. Answer: {a + b}",
            "history": [], "system": None} for a, b in ((1, 2), (3, 4), (2, 5), (6, 1))]


def _bits(method: str) -> int | None:
    return 4 if method == "qlora" else None


# (family, method, quantization bits) trained and reloaded; other methods on a k-bit base besides qlora
COMBOS = [(f, m, _bits(m)) for f in FAMILIES for m in METHODS] + [
    ("llama", "lora", 8), ("bloom", "ia3", 8), ("llama", "adalora", 4), ("bloom", "prompt", 4), ("llama", "dora", 4),
    ("bloom", "adapter_h", 4), ("llama", "adapter_parallel", 8)]


def _param(combo):
    family, method, bits = combo
    marks = () if family in DEFAULT_FAMILIES else (pytest.mark.slow,)
    return pytest.param(combo, id=f"{family}-{method}" + (f"-{bits}bit" if bits else ""), marks=marks)


def _argv(base: Path, family: str, method: str, bits: int | None, out: Path, *extra: str) -> list[str]:
    argv = ["--model_type", family, "--model_name_or_path", str(base), "--peft_type", method,
            "--output_dir", str(out), "--max_steps", str(STEPS), "--per_gpu_train_batch_size", str(len(RECORDS)),
            "--save_steps", "1000", "--logging_steps", "1", "--num_virtual_tokens", "4", "--seed", "0",
            "--learning_rate", "1e-2", "--compute_dtype", "fp32", *extra]  # logits compared at 1e-5
    if bits:
        argv += ["--quantization_bit", str(bits)]
    if MODELS[family].remote_code:
        argv.append("--trust_remote_code")
    return argv


def _batch(tokenizer, template):
    from unitune.data import Collator, encode

    examples = [encode(tokenizer, template, r, 128, False) for r in RECORDS]
    return examples, Collator(tokenizer.pad_token_id)(examples)


def _loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def _probe(model, tokenizer):
    """Logits on a fixed prompt and 6 greedy tokens: what the fresh process must reproduce."""
    model.eval()
    for module in model.modules():  # the loader turned bitsandbytes' CPU inference layout off for training;
        if hasattr(module, "support_avx512bf16_for_cpu"):  # back on, so both sides run the same 4-bit kernel
            from bitsandbytes.functional import has_avx512bf16

            module.support_avx512bf16_for_cpu = has_avx512bf16()
    model.config.use_cache = True
    enc = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits.float()
        tokens = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return logits, tokens[0, enc["input_ids"].shape[1]:].tolist()


def _budget_log():
    """A callback recording AdaLoRA's live rank count after every optimizer step (after the allocator ran)."""
    from transformers import TrainerCallback

    from unitune.methods.adalora import rank_budget

    class BudgetLog(TrainerCallback):
        def __init__(self):
            self.budgets = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.budgets.append(rank_budget(model))

    return BudgetLog()


def _expected_refusal(family: str, method: str, bits: int | None, spec=None) -> str | None:
    """What validate must say about a combination the family cannot do; `spec`: the entry as it applies to the
    tiny checkpoint (a converted Baichuan-7B takes prefix tuning, the 13B's own code does not)."""
    spec = spec or MODELS[family]
    if method == "prefix" and not spec.supports_prefix:
        return "does not support prefix tuning"
    if (bits or method == "qlora") and not spec.supports_kbit:
        return "cannot be loaded in 4 bits"
    if bits and method in ADAPTER_KINDS:  # transformers' Trainer refuses a k-bit base without peft
        return "trains on an unquantized base only"
    return None


def train_one(base: Path, family: str, method_name: str, bits: int | None, out: Path) -> dict:
    """uniform_finetune.py's own steps (presets, validate, shared loader, Trainer + callbacks, save_weights, save_outputs),
    on the fixed batch, keeping the trained model to compare with the fresh-process reload."""
    from unitune.loader import check_model_args, load

    model_args, data_args, peft_args, train_args = train.parse(_argv(base, family, method_name, bits, out))
    method, _ = resolve_method(peft_args.peft_type)
    spec = check_model_args(model_args)  # as uniform_finetune.py resolves it for this checkpoint
    try:
        method.validate(spec, model_args, peft_args, train_args)
    except UnituneError as err:
        return {"refused": str(err), "spec": spec}
    torch.manual_seed(0)
    loaded = load(model_args, mode="train", peft_args=peft_args, train_args=train_args)
    examples, batch = _batch(loaded.tokenizer, loaded.template)
    before = _loss(loaded.model, batch)
    trainer = train.build_trainer(loaded, method, peft_args, train_args, examples, [])
    budget = _budget_log() if method.name == "adalora" else None
    if budget is not None:
        trainer.add_callback(budget)
    start = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = _loss(loaded.model, batch)
    params = dict(loaded.model.named_parameters())
    unmoved = sorted(n for n, value in start.items() if torch.equal(params[n].detach(), value))
    train.save_weights(loaded, method, trainer, out)
    train.save_outputs(loaded, trainer, out, model_args, data_args, peft_args, train_args)
    logits, tokens = _probe(loaded.model, loaded.tokenizer)
    torch.save(logits, out / "trained_logits.pt")
    return {"before": before, "after": after, "tokens": tokens, "out": str(out), "method": method.name,
            "budgets": budget.budgets if budget else None, "bits": bits,
            "trainable": sorted(start), "unmoved": unmoved, "spec": spec}


# The fresh process: the shared loader, exactly as generate.py / the web UI would call it.
RELOAD = r"""
import json, sys, torch
from unitune.args import ModelArgs
from unitune.loader import load
for job in json.loads(sys.argv[1]):
    loaded = load(ModelArgs(**job["model_args"]), mode="infer")
    enc = loaded.tokenizer([job["prompt"]], return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**enc).logits.float()
        tokens = loaded.model.generate(**enc, max_new_tokens=6, do_sample=False,
                                       pad_token_id=loaded.tokenizer.pad_token_id)
    torch.save(logits, job["out"] + "/reloaded_logits.pt")
    base = load(ModelArgs(**job["base_args"]), mode="infer")  # the same base without what was trained
    with torch.no_grad():
        torch.save(base.model(**enc).logits.float(), job["out"] + "/base_logits.pt")
    ranks = {n: p.shape[0] for n, p in loaded.model.named_parameters() if ".lora_E." in n}
    json.dump({"tokens": tokens[0, enc["input_ids"].shape[1]:].tolist(), "method": loaded.method and loaded.method.name,
               "ranks": ranks}, open(job["out"] + "/reloaded.json", "w"))
"""


def _reload_args(family: str, base: Path, result: dict) -> tuple[dict, dict]:
    """ModelArgs of (the trained result, its bare base)."""
    args = {"model_type": family, "trust_remote_code": MODELS[family].remote_code, "quantization_bit": result["bits"],
            "model_name_or_path": str(base)}
    if result["method"] == "full":  # a full fine-tune is a whole model: it becomes the base
        return {**args, "model_name_or_path": result["out"]}, args
    return {**args, "adapter": result["out"]}, args


def _sharpen(src: Path, dst: Path) -> Path:
    """A copy of a tiny model with its matrices scaled up. Initialized at std 0.02, a 32-wide model is a
    near-constant function (uniform logits whatever the input), on which prompt-learning methods move the
    logits by less than the reload tolerance; at about 1/sqrt(width) the output depends on the input."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = load_file(str(dst / "model.safetensors"))
    save_file({k: v * 8 if v.ndim >= 2 else v for k, v in weights.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def bases(tiny_model, tmp_path_factory):
    """(family, k-bit?) -> base directory. The k-bit base is 64 wide: bitsandbytes' CPU 4-bit inference
    kernel packs weights in blocks of 64 inputs and 32 outputs, which the 32-wide conftest models are not."""
    from tests import tiny

    cache: dict[tuple[str, bool], Path] = {}

    def get(family: str, kbit: bool) -> Path:
        if (family, kbit) not in cache:
            if not kbit:
                src = tiny_model(family)
            else:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(tiny, "HIDDEN", 64)
                    src = tiny.build_model(family, tmp_path_factory.mktemp(f"kbit-{family}"))
            cache[family, kbit] = _sharpen(src, tmp_path_factory.mktemp(f"base-{family}-{int(kbit)}"))
        return cache[family, kbit]

    return get


@pytest.fixture(scope="module")
def trained(request, bases, tmp_path_factory):
    """Train and save every combination this session selected (any test parametrized by `combo`), then
    reload them all in one fresh process."""
    selected = []
    for item in request.session.items:
        combo = getattr(getattr(item, "callspec", None), "params", {}).get("combo")
        if item.module is request.module and combo is not None and combo not in selected:
            selected.append(combo)
    results, jobs = {}, []
    for family, method, bits in selected:
        base = bases(family, bool(bits))
        out = tmp_path_factory.mktemp(f"{family}-{method}-{bits or 32}")
        result = train_one(base, family, method, bits, out)
        results[family, method, bits] = result
        if "refused" in result:
            continue
        model_args, base_args = _reload_args(family, base, result)
        jobs.append({"model_args": model_args, "base_args": base_args, "prompt": PROMPT, "out": str(out)})
    if jobs:
        proc = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(jobs)], cwd=ROOT, capture_output=True,
                              text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return results


@pytest.mark.parametrize("combo", [_param(c) for c in COMBOS])
def test_trains_saves_and_reloads_in_fresh_process(trained, combo):
    result = trained[combo]
    refusal = _expected_refusal(*combo, spec=result["spec"])
    if refusal or "refused" in result:
        assert refusal and refusal in result.get("refused", ""), result
        pytest.skip(f"refused before loading, as it must be: {result['refused']}")
    out = Path(result["out"])
    assert result["after"] < result["before"], f"loss did not go down: {result['before']} -> {result['after']}"
    assert result["trainable"], "nothing was trainable"
    # every trainable tensor got a gradient and moved (a k-bit layer without backward would cut off the ones below)
    assert not result["unmoved"], result["unmoved"]
    reloaded = json.loads((out / "reloaded.json").read_text())
    if result["method"] != "full":
        assert reloaded["method"] is not None
    mine, theirs = torch.load(out / "trained_logits.pt"), torch.load(out / "reloaded_logits.pt")
    assert mine.shape == theirs.shape
    # k-bit bases too: both sides quantize the same float weights the same way and run the same kernels
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
    # ... and that equality says something: what was trained moved the logits far beyond that tolerance
    base = torch.load(out / "base_logits.pt")
    assert (mine[:, -base.shape[1]:] - base).abs().max() > 1e-3  # 100 x the tolerance
    assert reloaded["tokens"] == result["tokens"]


@pytest.mark.parametrize("combo", [_param((f, "adalora", None)) for f in DEFAULT_FAMILIES])
def test_adalora_prunes_rank_budget_to_target(trained, combo):
    family, result = combo[0], trained[combo]
    peft_args = PeftArgs()
    matrices = len(MODELS[family].lora_targets) * 2  # targets x 2 layers
    initial, target = peft_args.adalora_init_r * matrices, peft_args.lora_r * matrices
    budgets = result["budgets"]
    assert len(budgets) == STEPS
    assert all(a >= b for a, b in itertools.pairwise(budgets)), budgets
    assert budgets[0] <= initial and budgets[-1] == target < budgets[1] < initial, budgets
    config = json.loads((Path(result["out"]) / "adapter_config.json").read_text())
    assert config["total_step"] == STEPS and config["tfinal"] >= 1
    assert sum(sum(mask) for mask in config["rank_pattern"].values()) == target
    # the fresh process rebuilt the pruned (smaller) matrices from the saved rank pattern
    ranks = json.loads((Path(result["out"]) / "reloaded.json").read_text())["ranks"]
    assert sum(ranks.values()) == target


@pytest.mark.parametrize("combo", [_param(("llama", "freeze", None))])
def test_freeze_trains_and_saves_only_the_last_layers(trained, combo):
    result = trained[combo]
    from safetensors import safe_open

    out = Path(result["out"])
    with safe_open(out / "freeze_model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert saved == set(result["trainable"])
    assert saved and all(n.startswith("model.layers.") for n in saved)  # 2 layers, preset: the last 2
    assert json.loads((out / "unitune_adapter.json").read_text())["method"] == "freeze"


@pytest.mark.parametrize("combo", [_param(("llama", "full", None))])
def test_full_saves_a_whole_model(trained, combo):
    result = trained[combo]
    from unitune.loader import load_adapter

    out = Path(result["out"])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    with pytest.raises(UnituneError, match="--model_name_or_path"):
        load_adapter(None, str(out))


@pytest.mark.parametrize("combo", [_param(("llama", m, None)) for m in ("prefix", "p_tuning", "prompt")])
def test_prompt_learning_refuses_merge(trained, combo):
    result = trained[combo]
    from unitune.loader import load

    base = Path(json.loads((Path(result["out"]) / "adapter_config.json").read_text())["base_model_name_or_path"])
    with pytest.raises(UnituneError, match="cannot be merged"):
        load(ModelArgs(model_name_or_path=str(base), adapter=result["out"]), mode="merge")


@pytest.mark.parametrize("combo", [_param(("llama", m, None)) for m in ("adalora", "dora", "rslora", "ia3", "freeze")])
def test_merge_gives_the_trained_logits(trained, bases, combo):
    """loader.load(mode="merge"): peft's merge for the peft methods; freeze's load already wrote the weights."""
    result = trained[combo]
    from unitune.loader import load

    merged = load(ModelArgs(model_name_or_path=str(bases("llama", False)), adapter=result["out"]), mode="merge")
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.model.named_parameters())
    enc = merged.tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        logits = merged.model(**enc).logits
    torch.testing.assert_close(logits, torch.load(Path(result["out"]) / "trained_logits.pt"), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ refusals before anything is loaded
def _validate(method_name: str, family: str = "llama", spec=None, model_flags=None, peft_flags=None,
              train_flags=None, base: str | None = None):
    method, preset = resolve_method(method_name)
    model_args = ModelArgs(model_type=family, model_name_or_path=base, **(model_flags or {}))
    fields = set(PeftArgs.__dataclass_fields__)
    peft_args = PeftArgs(peft_type=method_name, **{k: v for k, v in {**preset, **(peft_flags or {})}.items()
                                                   if k in fields})
    method.validate(spec or MODELS[family], model_args, peft_args, TrainArgs(**(train_flags or {})))
    return model_args


@pytest.mark.parametrize("method, kwargs, pattern", [
    ("full", {"model_flags": {"quantization_bit": 4}}, "trains the base weights themselves"),
    ("freeze", {"model_flags": {"quantization_bit": 8}}, "trains the base weights themselves"),
    ("prefix", {"train_flags": {"gradient_checkpointing": True}}, "cannot be trained with --gradient_checkpointing"),
    ("prefix", {"spec": replace(MODELS["llama"], supports_prefix=False)}, "does not support prefix tuning"),
    ("lora", {"spec": replace(MODELS["llama"], supports_kbit=False), "model_flags": {"quantization_bit": 4}},
     "cannot be loaded in 4 bits"),
    ("ia3", {"spec": replace(MODELS["llama"], supports_kbit=False), "model_flags": {"quantization_bit": 8}},
     "cannot be loaded in 8 bits"),
    ("lora", {"spec": replace(MODELS["llama"], supports_gradient_checkpointing=False),
              "train_flags": {"gradient_checkpointing": True}}, "does not support --gradient_checkpointing"),
    ("qlora", {"model_flags": {"quantization_bit": 8}}, "4-bit base"),
    ("adalora", {"peft_flags": {"adalora_tinit": 3, "adalora_tfinal": 3}, "train_flags": {"max_steps": 6}},
     r"--adalora_tinit 3 \+ --adalora_tfinal 3 leave no rank-allocation phase in a 6-step run"),
    ("adalora", {"peft_flags": {"adalora_init_r": 8, "lora_r": 8}}, "init_r > target_r"),
    ("ia3", {"peft_flags": {"ia3_target_modules": ["q_proj"], "ia3_feedforward_modules": ["down_proj"]}},
     "must also be listed"),
    ("prompt", {"peft_flags": {"prompt_init": "random", "prompt_init_text": "hello"}}, "only with --prompt_init text"),
    ("p_tuning", {"peft_flags": {"num_virtual_tokens": 0}}, "--num_virtual_tokens"),
    ("freeze", {"peft_flags": {"freeze_trainable_layers": 0}}, "at least 1"),
])
def test_validate_refuses_before_loading(method, kwargs, pattern):
    with pytest.raises(UnituneError, match=pattern):
        _validate(method, **kwargs)


def test_freeze_refuses_more_layers_than_the_base_has(tiny_model):
    with pytest.raises(UnituneError, match="has only 2 decoder layers"):
        _validate("freeze", base=str(tiny_model("llama")), peft_flags={"freeze_trainable_layers": 3})


def test_qlora_forces_4_bits():
    assert _validate("qlora").quantization_bit == 4
    model_args, _, _, _ = train.parse(["--peft_type", "qlora"])
    assert model_args.quantization_bit == 4 and model_args.quant_type == "nf4" and model_args.double_quant


def test_adalora_schedule_defaults_from_the_run():
    from unitune.methods.adalora import schedule

    assert schedule(PeftArgs(), 100) == (10, 20)
    assert schedule(PeftArgs(), 4) == (0, 1)  # one final step at least: peft fixes the budget there
    assert schedule(PeftArgs(), 1) == (0, 0)
    with pytest.raises(UnituneError, match="no rank-allocation phase"):
        schedule(PeftArgs(adalora_tinit=5), 5)


def test_every_method_has_a_preset_naming_it():
    from unitune.methods import METHODS, read_preset

    for name in METHODS:
        if name in ("prefix_tuning", "prompt_tuning") or name.startswith("adapter_"):
            continue
        assert read_preset(name).get("method") == name, name
    # peft's own adapter_config.json names resolve to the registered methods (the loader relies on it)
    for peft_type, name in (("adalora", "adalora"), ("prefix_tuning", "prefix"), ("p_tuning", "p_tuning"),
                            ("prompt_tuning", "prompt"), ("ia3", "ia3"), ("lora", "lora")):
        assert resolve_method(peft_type)[0].name == name
    assert not resolve_method("prefix")[0].mergeable and resolve_method("ia3")[0].mergeable


# ------------------------------------------------------------------ the fine-tune entry point, per method
@pytest.mark.parametrize("method", METHODS)
def test_finetune_run_end_to_end(bases, tmp_path, method):
    """uniform_finetune.py's run(): train, save, then score the tuned model by generation on held-out data
    (prompt-learning methods included: their virtual tokens must go through generate())."""
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{k: r[k] for k in ("instruction", "input", "output")} for r in RECORDS]))
    out = tmp_path / "out"
    argv = [*_argv(bases("llama", method == "qlora"), "llama", method, None, out, "--data", str(data),
                   "--eval_data", str(data), "--eval_samples", "2", "--cutoff_len", "96",
                   "--cache_dir", str(tmp_path / "cache")), "--max_steps", "2"]
    results = train.run(argv)
    assert results["final_loss"] is not None and 0.0 <= results["tuned_accuracy"] <= 1.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["tuned_accuracy"] == results["tuned_accuracy"]
    own_save = resolve_method(method)[0].save is not None  # not peft's save_pretrained: unitune_adapter.json
    marker = "model.safetensors" if method == "full" else "unitune_adapter.json" if own_save else "adapter_config.json"
    assert (out / marker).is_file() and (out / "unitune_config.yaml").is_file()

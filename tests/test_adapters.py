"""Bottleneck adapters (adapter_h / adapter_p / adapter_parallel) on tiny llama and bloom models."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from unitune.args import ModelArgs, PeftArgs  # noqa: E402
from unitune.errors import UnituneError  # noqa: E402
from unitune.methods import resolve_method  # noqa: E402
from unitune.methods.adapters import CHILD, CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from unitune.models import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["adapter_h", "adapter_p", "adapter_parallel"]
TEXT = ["### Instruction:\nAdd the numbers.\n\n### Input:\n3 4\n\n### Response:\n3 + 4 = 7. Answer: 7",
        "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model):
    """family -> directory of the conftest's tiny random model + tokenizer (hidden 32, 2 layers, 2 kv heads)."""
    return {family: tiny_model(family) for family in ("llama", "bloom")}


def _base(tiny_dirs, family):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dirs[family], dtype=torch.float32).eval()


def _batch(tiny_dirs, family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs[family])
    return tok(TEXT, return_tensors="pt", padding=True)


def _build(model, family, peft_type, **flags):
    method, preset = resolve_method(peft_type)
    peft_args = PeftArgs(peft_type=peft_type, **{**preset, **flags})
    method.validate(MODELS[family], ModelArgs(), peft_args)
    torch.manual_seed(1)
    return method, method.build(model, MODELS[family], peft_args)


def _adapted(model) -> set[str]:
    return {name for name, module in model.named_modules() if hasattr(module, CHILD)}


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_placement(tiny_dirs, family):
    attn, mlp = {"llama": ("model.layers.{}.self_attn", "model.layers.{}.mlp"),
                 "bloom": ("transformer.h.{}.self_attention", "transformer.h.{}.mlp")}[family]
    expected = {"adapter_h": {attn.format(i) for i in (0, 1)} | {mlp.format(i) for i in (0, 1)},
                "adapter_p": {mlp.format(i) for i in (0, 1)},
                "adapter_parallel": {mlp.format(i) for i in (0, 1)}}
    for kind in KINDS:
        _, model = _build(_base(tiny_dirs, family), family, kind)
        assert _adapted(model) == expected[kind], kind
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(f".{CHILD}." in n for n in trainable)
        # base parameter names are unchanged: a plain base state dict still loads into the adapted model
        base_names = set(_base(tiny_dirs, family).state_dict())
        assert base_names == {k for k in model.state_dict() if f".{CHILD}." not in k}


def test_parallel_beside_attention_projections(tiny_dirs):
    _, model = _build(_base(tiny_dirs, "llama"), "llama", "adapter_parallel",
                      adapter_targets=["q_proj", "k_proj", "v_proj"])
    projections = ("q_proj", "k_proj", "v_proj")
    assert _adapted(model) == {f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in projections}
    k_adapter = getattr(model.get_submodule("model.layers.0.self_attn.k_proj"), CHILD)
    assert (k_adapter.down.in_features, k_adapter.up.out_features) == (32, 16)  # grouped-query k: 2 heads x 8
    with torch.no_grad():
        model(**_batch(tiny_dirs, "llama"))


def test_unknown_target_lists_module_names(tiny_dirs):
    with pytest.raises(UnituneError, match=r"--adapter_targets: nope not found.*q_proj"):
        _build(_base(tiny_dirs, "llama"), "llama", "adapter_p", adapter_targets=["nope"])


@pytest.mark.parametrize("flags, pattern", [({"adapter_scaling": "big"}, "--adapter_scaling"),
                                             ({"bottleneck_size": 0}, "--bottleneck_size"),
                                             ({"adapter_dropout": 1.5}, "--adapter_dropout"),
                                             ({"adapter_targets": [" "]}, "--adapter_targets"),
                                             ({"quantization_bit": 4}, "--quantization_bit")])
def test_validate_refuses_bad_flags(flags, pattern):
    method, _ = resolve_method("adapter_h")
    model_flags = {k: flags.pop(k) for k in list(flags) if k == "quantization_bit"}
    with pytest.raises(UnituneError, match=pattern):
        method.validate(MODELS["llama"], ModelArgs(**model_flags), replace(PeftArgs(peft_type="adapter_h"), **flags))


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_zero_up_leaves_logits_unchanged(tiny_dirs, family):
    batch = _batch(tiny_dirs, family)
    with torch.no_grad():
        before = _base(tiny_dirs, family)(**batch).logits
        for kind in KINDS:
            _, model = _build(_base(tiny_dirs, family), family, kind, adapter_init="zero_up")
            assert torch.equal(model(**batch).logits, before), kind
            _, model = _build(_base(tiny_dirs, family), family, kind)  # bert init does change the output
            assert not torch.equal(model(**batch).logits, before), kind


def test_bloom_sequential_adapter_sees_sublayer_output_before_residual(tiny_dirs):
    # BLOOM's MLP returns mlp(x) + residual; Houlsby's adapter transforms mlp(x) alone, before the sum
    _, model = _build(_base(tiny_dirs, "bloom"), "bloom", "adapter_p")
    mlp = model.get_submodule("transformer.h.0.mlp")
    adapter = getattr(mlp, CHILD)
    x, residual = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    with torch.no_grad():
        adapted = mlp(x, residual)
        mlp._forward_hooks.clear()
        sublayer, full = mlp(x, torch.zeros_like(residual)), mlp(x, residual)
    assert torch.allclose(adapted, full + adapter.delta(sublayer), atol=1e-6)
    assert not torch.allclose(adapted, full + adapter.delta(full), atol=1e-4)


def _train(model, batch, steps=10):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=3e-2)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_loss_and_only_moves_adapters(tiny_dirs, kind):
    _, model = _build(_base(tiny_dirs, "llama"), "llama", kind)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if f".{CHILD}." not in k}
    _, losses = _train(model, _batch(tiny_dirs, "llama"))
    assert losses[-1] < losses[0] - 0.1 and min(losses) == losses[-1], losses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


RELOAD = r"""
import json, sys, torch
from unitune.args import ModelArgs
from unitune.loader import load
out = {}
for key, (family, base, adapter) in json.loads(sys.argv[1]).items():
    flags = ModelArgs(model_type=family, model_name_or_path=base, adapter=adapter, compute_dtype="fp32")
    loaded = load(flags, mode="infer")
    batch = loaded.tokenizer(json.loads(sys.argv[2]), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = loaded.model(**batch).logits
        cached = loaded.model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = loaded.model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    out[key] = {"logits": logits.tolist(), "cached": cached.tolist(), "uncached": uncached.tolist(),
                "method": loaded.method.name}
json.dump(out, sys.stdout)
"""


def test_save_and_reload_in_fresh_process(tiny_dirs, tmp_path):
    from transformers import AutoTokenizer

    cases = {"h_llama": ("llama", "adapter_h", {}),
             "parallel_bloom": ("bloom", "adapter_parallel", {"adapter_scaling": "learned", "adapter_dropout": 0.1})}
    expected, jobs = {}, {}
    for key, (family, kind, flags) in cases.items():
        method, model = _build(_base(tiny_dirs, family), family, kind, **flags)
        tok = AutoTokenizer.from_pretrained(tiny_dirs[family])
        tok.padding_side = "left"  # the loader's inference side
        batch = tok(TEXT, return_tensors="pt", padding=True)
        model, _ = _train(model, batch, steps=5)
        with torch.no_grad():
            logits = model(**batch).logits
            gen = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        method.save(model, tmp_path / key)
        expected[key] = (logits, gen)
        jobs[key] = (family, str(tiny_dirs[family]), str(tmp_path / key))

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "parallel_bloom" / WEIGHTS_FILE))
    assert saved and all(f".{CHILD}." in k for k in saved)
    assert any(k.endswith(f"{CHILD}.scale") for k in saved)  # the learned scale is saved too
    assert json.loads((tmp_path / "h_llama" / CONFIG_FILE).read_text())["method"] == "adapter_h"

    proc = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(jobs), json.dumps(TEXT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    for key, (logits, gen) in expected.items():
        assert got[key]["method"] == cases[key][1]
        assert torch.allclose(torch.tensor(got[key]["logits"]), logits, atol=1e-5)
        assert got[key]["cached"] == got[key]["uncached"] == gen.tolist()  # the KV-cache path agrees


def test_merge_is_refused(tiny_dirs, tmp_path):
    from unitune.loader import load

    method, model = _build(_base(tiny_dirs, "llama"), "llama", "adapter_p")
    method.save(model, tmp_path)
    assert not method.mergeable
    with pytest.raises(UnituneError, match="cannot be merged"):
        load(ModelArgs(model_name_or_path=str(tiny_dirs["llama"]), adapter=str(tmp_path)), mode="merge")


def test_finetune_entrypoint_end_to_end(tiny_dirs, tmp_path):
    """The real training run (Trainer, checkpoints, save) with an adapter, then continued from it."""
    from unitune.train import run

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Add the numbers.", "input": f"{a} {b}",
                                        "output": f"{a} + {b} = {a + b}. Answer: {a + b}"}) + "\n"
                            for a in range(1, 5) for b in range(1, 5)))
    common = ["--model_name_or_path", str(tiny_dirs["llama"]), "--data", str(data), "--cache_dir",
              str(tmp_path / "cache"), "--per_gpu_train_batch_size", "4", "--learning_rate", "1e-2"]
    results = run([*common, "--peft_type", "adapter_h", "--max_steps", "4", "--output_dir", str(tmp_path / "a")])
    assert results["final_loss"] is not None and results["trainable_parameters"] == 4 * 2 * 32 * 64
    assert (tmp_path / "a" / CONFIG_FILE).is_file() and (tmp_path / "a" / WEIGHTS_FILE).is_file()
    again = run([*common, "--adapter", str(tmp_path / "a"), "--max_steps", "2", "--output_dir", str(tmp_path / "b")])
    assert again["trainable_parameters"] == results["trainable_parameters"]
    first, second = (load_file_weights(tmp_path / d) for d in ("a", "b"))
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)


def load_file_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS_FILE))


def test_every_model_type_gets_its_adapters(tiny_model):
    """The ModelSpec attention / MLP names hold on every family's stand-in, and zero_up changes no logit."""
    from tests.tiny import FAMILIES, LAYERS, REMOTE_CODE, fixture_present
    from unitune.args import ModelArgs
    from unitune.loader import load as unitune_load

    for family in FAMILIES:
        if not fixture_present(family):
            continue  # the real-code fixtures are absent here (../shared)
        path = tiny_model(family)
        args = ModelArgs(model_type=family, model_name_or_path=str(path), compute_dtype="fp32",
                         trust_remote_code=family in REMOTE_CODE)
        tok = unitune_load(args, mode="infer").tokenizer
        batch = tok(TEXT[:1], return_tensors="pt", return_token_type_ids=False)
        load = lambda: unitune_load(args, mode="infer").model  # noqa: E731
        with torch.no_grad():
            before = load()(**batch).logits
            _, model = _build(load(), family, "adapter_h", adapter_init="zero_up")
            assert len(_adapted(model)) == 2 * LAYERS, family
            assert torch.equal(model(**batch).logits, before), family

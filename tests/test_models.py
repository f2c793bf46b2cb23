"""The --model_type registry, family by family, on tiny models: the real published code of the remote-code families
(../shared/fixtures/remote), native models with each family's real module names for the rest.

Every family goes through the shared loader: LoRA trains (loss falls), saves, and reloads both with plain
`peft` and through `unitune.loader.load(mode="infer", adapter=...)` to the same logits.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from tests.tiny import FAMILIES, LAYERS, REMOTE_CODE, build_model  # noqa: E402
from unitune.args import ModelArgs, PeftArgs, TrainArgs  # noqa: E402
from unitune.errors import UnituneError  # noqa: E402
from unitune.loader import load  # noqa: E402
from unitune.models import MODELS, get_model_spec  # noqa: E402

TEXTS = ["### Instruction:\nAdd the numbers.\n\n### Input:\n3 4\n\n### Response:\n3 + 4 = 7",
         "The quick brown fox jumps over the lazy dog."]
STEPS = 8
# their checkpoints run their own tokenizer (and, for baichuan2's 13B, modeling) code; the tiny baichuan is the 7B
# layout (converted to native LLaMA) with Baichuan's own tokenizer
REMOTE = sorted(REMOTE_CODE)


def _model_args(tiny_model, family: str, **kw) -> ModelArgs:
    return ModelArgs(model_type=family, model_name_or_path=str(tiny_model(family)), compute_dtype="fp32",
                     trust_remote_code=family in REMOTE, **kw)


def _spec(tiny_model, family: str):
    """The registry entry as it applies to the tiny checkpoint (a converted one takes its native targets)."""
    from unitune.loader import check_model_args

    return check_model_args(_model_args(tiny_model, family))


def _batch(tokenizer, labels: bool = True) -> dict:
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True, return_token_type_ids=False)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if labels:
        batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return batch


def _base(path, family: str):
    """The base model as a user loads it without unitune: the native conversion where the family has one."""
    from transformers import AutoModelForCausalLM

    from unitune import families

    source = families.model_source(MODELS[family].family, str(path))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=source == str(path))
    return families.after_load(MODELS[family].family, model).eval()


def _leaf_names(model) -> list[str]:
    return [name.rsplit(".", 1)[-1] for name, _ in model.named_modules()]


def test_every_registered_family_has_a_tiny_model():
    assert sorted(FAMILIES) == sorted(MODELS)


@pytest.mark.parametrize("family", list(MODELS))
def test_registry_names_exist_in_tiny_model(tiny_model, family):
    spec = _spec(tiny_model, family)
    model = _base(tiny_model(family), family)
    names = _leaf_names(model)
    linear = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    for target in (*spec.lora_targets, *spec.ia3_feedforward):
        assert target in linear, f"{family}: {target} is not a Linear of the tiny model"
    # adapters go after/beside these: exactly one attention and one feed-forward module per decoder layer
    assert names.count(spec.attention) == LAYERS, f"{family}: attention module {spec.attention!r}"
    assert names.count(spec.mlp) == LAYERS, f"{family}: mlp module {spec.mlp!r}"


@pytest.mark.parametrize("family", list(MODELS))
def test_lora_trains_saves_and_reloads(tiny_model, family, tmp_path):
    from peft import PeftModel

    spec = _spec(tiny_model, family)
    model_args = _model_args(tiny_model, family)
    loaded = load(model_args, mode="train", peft_args=PeftArgs(peft_type="lora", lora_r=4, lora_dropout=0.0),
                  train_args=TrainArgs())
    model, batch = loaded.model, _batch(loaded.tokenizer)
    assert loaded.spec == spec
    wrapped = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == set(spec.lora_targets) if spec.lora_targets else len(wrapped) > 1  # auto: all linear
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    with torch.no_grad():
        first = model(**batch).loss.item()
    for _ in range(STEPS):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        with model.disable_adapter():
            base_logits = model(**batch).logits
    assert out.loss.item() < first - 0.05, f"{family}: loss {first:.3f} -> {out.loss.item():.3f}"
    assert (out.logits - base_logits).abs().max() > 1e-3  # the adapter matters, so equality below means something

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    plain = PeftModel.from_pretrained(_base(model_args.base_path, family), adapter).eval()
    again = load(replace(model_args, adapter=str(adapter)), mode="infer")
    assert not again.model.training
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, out.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(again.model(**batch).logits, out.logits, atol=1e-5, rtol=0)

    # the infer-mode model answers a left-padded batch
    prompts = _batch(again.tokenizer, labels=False)
    assert again.tokenizer.padding_side == "left"
    generated = again.model.generate(**prompts, max_new_tokens=4, do_sample=False)
    assert generated.shape == (len(TEXTS), prompts["input_ids"].shape[1] + 4)


@pytest.mark.parametrize("family", REMOTE)
def test_remote_code_family_needs_trust_remote_code(tiny_model, family):
    args = replace(_model_args(tiny_model, family), trust_remote_code=False)
    with pytest.raises(UnituneError, match="--trust_remote_code"):
        load(args, mode="infer")


def test_unknown_model_type_lists_the_choices(tiny_model):
    with pytest.raises(UnituneError) as err:
        load(replace(_model_args(tiny_model, "llama"), model_type="gpt-7"), mode="infer")
    message = str(err.value)
    assert "gpt-7" in message and "\n" not in message
    assert all(name in message for name in MODELS)
    with pytest.raises(UnituneError, match="choose one of"):
        get_model_spec("gpt-7")


@pytest.mark.parametrize("family", REMOTE)
def test_real_checkpoint_behaves_like_a_transformers_model(tiny_model, family):
    """KV cache, left padding, gradient checkpointing and prefix tuning work on the real checkpoints."""
    from peft import PrefixTuningConfig, get_peft_model

    model = _base(tiny_model(family), family)
    tok = load(_model_args(tiny_model, family), mode="infer").tokenizer
    assert tok.padding_side == "left"
    prompts = _batch(tok, labels=False)
    cached = model.generate(**prompts, max_new_tokens=6, do_sample=False)
    assert torch.equal(cached, model.generate(**prompts, max_new_tokens=6, do_sample=False, use_cache=False))
    for row, text in enumerate(TEXTS):  # padding changes nothing
        alone = model.generate(**tok([text], return_tensors="pt", return_token_type_ids=False),
                               max_new_tokens=6, do_sample=False)
        assert torch.equal(alone[0, -6:], cached[row, -6:])

    grads = []
    for checkpointing in (False, True):  # through the loader, as a --gradient_checkpointing run does
        torch.manual_seed(0)  # same LoRA init both times
        loaded = load(_model_args(tiny_model, family), mode="train", peft_args=PeftArgs(lora_dropout=0.0),
                      train_args=TrainArgs(gradient_checkpointing=checkpointing))
        assert any(getattr(m, "gradient_checkpointing", False) for m in loaded.model.modules()) == checkpointing
        loaded.model(**_batch(loaded.tokenizer)).loss.backward()
        grads.append([p.grad for p in loaded.model.parameters() if p.requires_grad])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain)

    if not _spec(tiny_model, family).supports_prefix:  # refused before loading (see test_methods); nothing more to check
        return
    # the spec says supports_prefix: peft prefix tuning feeds the model's KV cache
    from unitune.compat import fix_prompt_learning_generation

    prefixed = fix_prompt_learning_generation(
        get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)))
    prefixed.train()
    prefixed(**_batch(tok)).loss.backward()
    assert all(p.grad is not None for p in prefixed.parameters() if p.requires_grad)
    prefixed.eval()
    assert prefixed.generate(**prompts, max_new_tokens=3, do_sample=False).shape[1] == cached.shape[1] - 3


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_tiny_models_are_deterministic(tmp_path, family):
    from safetensors.torch import load_file

    one = load_file(build_model(family, tmp_path / "one") / "model.safetensors")
    two = load_file(build_model(family, tmp_path / "two") / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)

"""merge.py: LoRA and QLoRA adapters fold into an unquantized base that plain transformers loads, checked."""

from __future__ import annotations

import json

import pytest

from unitune import merge as M
from unitune.errors import UnituneError

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROBE = "### Instruction:\nAdd 3 and 4.\n\n### Response:\n"


def _train_adapter(base: str, out, quantization_bit=None) -> str:
    """A few real optimizer steps through the shared loader (4-bit base on CPU for QLoRA), then save."""
    import torch

    from unitune.args import ModelArgs, PeftArgs
    from unitune.loader import load

    torch.manual_seed(0)
    model_args = ModelArgs(model_name_or_path=base, quantization_bit=quantization_bit)
    peft_args = PeftArgs(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=TARGETS)
    loaded = load(model_args, mode="train", peft_args=peft_args)
    if quantization_bit:
        assert loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.__class__.__name__ == \
            "Linear4bit"
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    batch = loaded.tokenizer([PROBE + "3 + 4 = 7. Answer: 7"] * 2, return_tensors="pt")
    losses = []
    for _ in range(4):
        loss = loaded.model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    loaded.model.save_pretrained(out)
    return str(out)


def _logits(model, tokenizer):
    import torch

    with torch.no_grad():
        return model(**tokenizer(PROBE, return_tensors="pt")).logits.float()


def _assert_plain_load_matches(base: str, adapter: str, merged, tolerance: float):
    """The merged dir through plain transformers == base (unquantized) + adapter through plain peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    got = _logits(AutoModelForCausalLM.from_pretrained(merged).eval(), tokenizer)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    want = _logits(reference, tokenizer)
    base_only = _logits(AutoModelForCausalLM.from_pretrained(base).eval(), tokenizer)
    assert float((got - want).abs().max()) <= tolerance
    assert float((base_only - want).abs().max()) > 100 * tolerance  # the adapter matters: merging kept it


@pytest.fixture(scope="module")
def llama(tiny_model):
    return str(tiny_model("llama"))


@pytest.fixture(scope="module")
def lora_adapter(llama, tmp_path_factory):
    return _train_adapter(llama, tmp_path_factory.mktemp("lora"))


def test_merge_lora_writes_a_plain_transformers_model(llama, lora_adapter, tmp_path):
    merged = tmp_path / "merged"
    result = M.run(["--model_name_or_path", llama, "--lora_dir", lora_adapter, "--merged_dir", str(merged),
                    "--max_shard_size", "100KB"])
    assert result["max_logit_diff"] <= 1e-3 == result["tolerance"]
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) >= 2  # sharded
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    assert "adapter_config.json" not in names
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary directory left behind
    _assert_plain_load_matches(llama, lora_adapter, merged, 1e-4)

    # an existing non-empty target is kept unless --overwrite
    with pytest.raises(UnituneError, match="--overwrite"):
        M.run(["--model_name_or_path", llama, "--lora_dir", lora_adapter, "--merged_dir", str(merged)])
    M.run(["--model_name_or_path", llama, "--lora_dir", lora_adapter, "--merged_dir", str(merged), "--overwrite"])
    assert "model.safetensors" in {p.name for p in merged.iterdir()}  # one shard now: the old dir was replaced
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    """A tiny llama whose linear layers bitsandbytes can quantize on CPU (in_features a multiple of its 64 block)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("llama64")
    tok = build_tokenizer(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return str(out)


def test_merge_qlora_adapter_into_the_unquantized_base(llama64, tmp_path):
    pytest.importorskip("bitsandbytes")
    adapter = _train_adapter(llama64, tmp_path / "qlora", quantization_bit=4)
    merged = tmp_path / "merged"
    # the flags of the QLoRA run, --quantization_bit 4 included: merge still reloads the base unquantized
    result = M.run(["--model_name_or_path", llama64, "--lora_dir", adapter, "--merged_dir", str(merged),
                    "--quantization_bit", "4"])
    assert result["max_logit_diff"] <= 1e-3
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    _assert_plain_load_matches(llama64, adapter, merged, 1e-4)


def test_non_mergeable_adapter_is_refused(llama, tmp_path, capsys):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from unitune.cli import merge

    adapter = tmp_path / "prompt"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.save_pretrained(adapter)
    capsys.readouterr()  # only what merge.py writes counts
    with pytest.raises(SystemExit) as exit_info:
        merge(["--model_name_or_path", llama, "--lora_dir", str(adapter), "--merged_dir", str(tmp_path / "out")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cannot be merged" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_failed_check_writes_nothing(llama, lora_adapter, tmp_path):
    with pytest.raises(UnituneError, match="merge check failed"):
        M.run(["--model_name_or_path", llama, "--lora_dir", lora_adapter, "--merged_dir", str(tmp_path / "out"),
               "--tolerance", "1e-12"])
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory


def test_flag_mistakes(llama, lora_adapter, tmp_path):
    with pytest.raises(UnituneError, match="--lora_dir"):
        M.run(["--model_name_or_path", llama, "--merged_dir", str(tmp_path / "out")])
    with pytest.raises(UnituneError, match="--merged_dir"):
        M.run(["--model_name_or_path", llama, "--lora_dir", lora_adapter])
    with pytest.raises(UnituneError, match="is the --lora_dir directory"):
        M.run(["--model_name_or_path", llama, "--lora_dir", lora_adapter, "--merged_dir", lora_adapter])
    with pytest.raises(UnituneError, match="no such adapter directory"):
        M.run(["--model_name_or_path", llama, "--lora_dir", str(tmp_path / "nope"), "--merged_dir",
               str(tmp_path / "out")])

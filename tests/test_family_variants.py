"""The registry tells families that share a checkpoint format apart (ChatGLM2 / ChatGLM3 / GLM-4, Baichuan /
Baichuan2), and the conversions those variants add: Baichuan-7B / Baichuan2-7B to native LLaMA (W_pack split,
NormHead folded in) and GLM-4-9B's chatglm format to native Glm.

Baichuan-7B's own modeling file is not among the fixtures (../shared/fixtures/remote holds the 13B), so the 7B
conversion is checked against a hand-written forward of its published math (RMSNorm, W_pack rows [q; k; v],
rotate-half RoPE with base 10000, SwiGLU, Baichuan2's NormHead linear(h, normalize(W))). GLM-4's is checked
against ChatGLM2's own modeling code (the fixture) with the RoPE base scaled by rope_ratio, as GLM-4's code does.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.tiny import build_baichuan_7b, real_fixture  # noqa: E402
from unitune.args import ModelArgs  # noqa: E402
from unitune.loader import check_model_args, load  # noqa: E402

IDS = torch.tensor([[1, 17, 250, 999, 42, 7, 1500, 3, 88, 2000, 5, 64]])


def _args(path, model_type: str) -> ModelArgs:
    return ModelArgs(model_type=model_type, model_name_or_path=str(path), compute_dtype="fp32", trust_remote_code=True)


def baichuan_7b_reference(path: Path, ids, norm_head: bool):
    """Baichuan-7B / Baichuan2-7B's forward, written from its published math (no cache, no padding)."""
    import torch.nn.functional as F

    from unitune.families import read_weights

    config = json.loads((path / "config.json").read_text())
    w = read_weights(path)
    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["rms_norm_eps"]
    d, (batch, n) = hidden // heads, ids.shape

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(n).float(), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rope(x):
        return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * sin

    causal = torch.full((n, n), float("-inf")).triu(1)
    h = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms(h, w[p + "input_layernorm.weight"])
        qkv = (x @ w[p + "self_attn.W_pack.weight"].T).unflatten(-1, (3, heads, d))  # rows [q; k; v]
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(-3))
        attn = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(d) + causal, -1) @ v
        h = h + attn.transpose(1, 2).reshape(batch, n, hidden) @ w[p + "self_attn.o_proj.weight"].T
        x = rms(h, w[p + "post_attention_layernorm.weight"])
        gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w["lm_head.weight"]
    return rms(h, w["model.norm.weight"]) @ (F.normalize(head) if norm_head else head).T


@pytest.mark.parametrize("model_type,norm_head", [("baichuan", False), ("baichuan2", True)])
def test_baichuan_7b_converts_to_native_llama_with_its_logits(tmp_path, model_type, norm_head):
    path = build_baichuan_7b(tmp_path / "ckpt")
    loaded = load(_args(path, model_type), mode="infer")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert type(loaded.model).__module__.startswith("transformers.models.")  # none of the checkpoint's code
    assert loaded.spec.lora_targets == ("q_proj", "k_proj", "v_proj") and loaded.spec.supports_prefix
    assert loaded.template.name == model_type
    with torch.no_grad():
        ours = loaded.model(input_ids=IDS).logits
    torch.testing.assert_close(ours, baichuan_7b_reference(path, IDS, norm_head), atol=1e-5, rtol=0)
    # the two heads differ, so each entry's equality above says which head it folded in
    assert (baichuan_7b_reference(path, IDS, True) - baichuan_7b_reference(path, IDS, False)).abs().max() > 1e-2


def test_auto_picks_each_baichuan_entry_from_the_checkpoint(tmp_path):
    from unitune import families

    seven_b = build_baichuan_7b(tmp_path / "7b")
    v1 = check_model_args(_args(seven_b, "auto"))
    assert (v1.name, v1.template, v1.lora_targets) == ("baichuan", "baichuan", ("q_proj", "k_proj", "v_proj"))
    # a native LLaMA written from it (the conversion, as a merged model is) keeps the native targets
    native = check_model_args(_args(families.converted(seven_b, "baichuan"), "baichuan"))
    assert native.lora_targets == ("q_proj", "k_proj", "v_proj") and native.supports_prefix
    v2 = check_model_args(_args(real_fixture("baichuan2"), "auto"))  # its modeling file defines NormHead
    assert (v2.name, v2.template, v2.lora_targets) == ("baichuan2", "baichuan2", ("W_pack",))
    assert not v2.supports_prefix  # the 13B runs its own code (ALiBi), which prefix tuning cannot drive


def _glm4_chatglm_format(out: Path, rope_ratio: float = 500.0) -> Path:
    """GLM-4-9B's chatglm-format layout: ChatGLM2's config and weight names plus rope_ratio, and a
    tokenizer_config naming GLM-4's tiktoken class (the weights are the ChatGLM2 fixture's)."""
    src = real_fixture("chatglm")
    out.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    config.update(rope_ratio=rope_ratio, _name_or_path="THUDM/glm-4-9b-chat")
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(src / "model.safetensors", out / "model.safetensors")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]}}))
    return out


def test_glm4_chatglm_format_converts_to_native_glm_with_its_codes_logits(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from unitune import families
    from unitune.families import read_weights, remote_class

    path = _glm4_chatglm_format(tmp_path / "glm4")
    assert families.checkpoint_code("glm4", str(path)) == ["tokenizer"]  # converted: only its tokenizer class runs
    model = AutoModelForCausalLM.from_pretrained(families.converted(path, "glm4"), dtype=torch.float32).eval()
    assert type(model).__name__ == "GlmForCausalLM"

    src = real_fixture("chatglm")
    config = AutoConfig.from_pretrained(src, trust_remote_code=True)
    config.dtype = config.torch_dtype = torch.float32
    config.max_length = config.seq_length
    ref = remote_class(str(src), "modeling_chatglm.ChatGLMForConditionalGeneration")(config)
    ref.load_state_dict(read_weights(src))
    rotary = ref.transformer.rotary_pos_emb  # GLM-4's RotaryEmbedding: base 10000 * rope_ratio, else ChatGLM2's
    rotary.forward = lambda max_seq_len, offset=0: rotary.forward_impl(
        max_seq_len, rotary.dim, dtype=rotary.inv_freq.dtype, device=rotary.inv_freq.device, base=10000 * 500.0)
    ids = IDS.clamp(max=config.padded_vocab_size - 1)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits,
                                   ref.eval()(input_ids=ids, use_cache=False, return_dict=True).logits,
                                   atol=1e-5, rtol=0)


def test_auto_tells_chatglm2_chatglm3_and_glm4_apart(tmp_path):
    from unitune.models import detect_model_spec

    def detect(path):
        return detect_model_spec(json.loads((Path(path) / "config.json").read_text()), str(path)).name

    assert detect(real_fixture("chatglm")) == "chatglm"  # ChatGLM2's tokenizer code has no role tokens
    assert detect(_glm4_chatglm_format(tmp_path / "glm4")) == "glm4"
    chatglm3 = tmp_path / "chatglm3"
    chatglm3.mkdir()
    shutil.copy(real_fixture("chatglm") / "config.json", chatglm3)
    # ChatGLM3's tokenization_chatglm.py: its SPTokenizer registers the role tokens
    (chatglm3 / "tokenization_chatglm.py").write_text(
        'role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]\n')
    assert detect(chatglm3) == "chatglm3"


def test_a_named_entry_that_is_not_the_checkpoints_warns_once(caplog):
    from unitune import loader

    loader._warned.clear()
    with caplog.at_level(logging.WARNING, logger="unitune.loader"):
        assert check_model_args(_args(real_fixture("chatglm"), "chatglm3")).name == "chatglm3"  # used as asked
        check_model_args(_args(real_fixture("chatglm"), "chatglm3"))
    warnings = [r.getMessage() for r in caplog.records if "looks like a chatglm checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "--model_type chatglm" in warnings[0]

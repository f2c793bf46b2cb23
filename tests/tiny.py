"""Tiny offline models for tests: a byte-level BPE tokenizer and random models of each family."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = ["Below is an instruction that describes a task. Write a response that appropriately completes the request.",
          "### Instruction:\nAdd the numbers.\n\n### Input:\n3 4\n\n### Response:\n3 + 4 = 7. Answer: 7",
          "以下是描述任务的指令。请编写一个恰当完成该请求的回答。答案：七", "The quick brown fox jumps over the lazy dog."]


def build_tokenizer(out: Path, vocab_size: int = 400):
    """A byte-level BPE tokenizer with <s> </s> <pad> <unk>, saved so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)
    return fast

# Tiny checkpoints with the real published code of the remote-code families (chatglm3 shares ChatGLM2's: same
# architecture and tokenizer code, another chat format) (../shared/fixtures/remote, beside
# the repository; read-only, never copied into it). Tests of these families skip where it is absent.
REMOTE = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "remote"
REAL = {"chatglm": "chatglm2-6b", "chatglm3": "chatglm2-6b", "baichuan2": "baichuan2-13b-chat",
        "internlm2": "internlm2-chat-7b", "moss": "moss-moon-003-sft"}

# The families whose tiny checkpoint runs checkpoint code (at least its tokenizer class), with the fixture it needs:
# the real fixtures, and the Baichuan-7B layout built on Baichuan's real tokenizer files (build_baichuan_7b)
REMOTE_CODE = {**REAL, "baichuan": REAL["baichuan2"]}


def fixture_present(family: str) -> bool:
    return family not in REMOTE_CODE or (REMOTE / REMOTE_CODE[family] / "config.json").is_file()


# One tiny model per --model_type: the real fixture where there is one, else a native class with the family's
# real module names (see unitune/models.py).
FAMILIES = ["llama", "chatglm", "chatglm3", "glm4", "bloom", "moss", "internlm", "internlm2", "baichuan", "baichuan2",
            "qwen2", "mistral", "auto"]
HIDDEN, LAYERS, HEADS = 32, 2, 4  # the real fixtures have 2 layers too


def real_fixture(family: str) -> Path:
    """The shared real-code checkpoint of `family`; skips the calling test where ../shared is absent."""
    import pytest

    path = REMOTE / REAL[family]
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} is absent: the real-checkpoint fixtures live in ../shared/fixtures/remote")
    return path


def _native_config(family: str, vocab: int, ids: dict):
    import transformers as tf

    llama_like = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS // 2, max_position_embeddings=512,
                      tie_word_embeddings=False, **ids)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "internlm":  # InternLM (v1) is LLaMA with biases on q/k/v/o
        return tf.LlamaConfig(attention_bias=True, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=256, **llama_like)
    if family == "auto":  # any other causal LM: Phi-3 (fused qkv_proj / gate_up_proj, self_attn / mlp)
        return tf.Phi3Config(**{**llama_like, "pad_token_id": ids["pad_token_id"]})
    if family == "bloom":
        return tf.BloomConfig(vocab_size=vocab, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, **ids)
    if family == "glm4":  # GLM-4-9B-Chat's -hf release: native Glm (multi-query attention, half-dim RoPE)
        return tf.GlmConfig(head_dim=HIDDEN // HEADS, **llama_like)
    raise KeyError(family)


def build_baichuan_7b(out: Path, seed: int = 0) -> Path:
    """A tiny checkpoint in the Baichuan-7B / Baichuan2-7B layout: config.json model_type "baichuan" with the
    rotary models' max_position_embeddings, fused W_pack, upstream weight names, and Baichuan's real tokenizer
    files (its sentencepiece class; from the Baichuan2-13B fixture, which shares them). Same weights per seed.
    Whether it is Baichuan 1 or 2 (NormHead) is the --model_type's to say: it ships no modeling file."""
    import shutil

    import torch
    from safetensors.torch import save_file

    src = real_fixture("baichuan2")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenization_baichuan.py", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    config = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_act": "silu",
              "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_attention_heads": HEADS,
              "num_hidden_layers": LAYERS, "max_position_embeddings": 512, "model_max_length": 512,
              "rms_norm_eps": 1e-6, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
              "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    weights = {"model.embed_tokens.weight": rand(vocab, HIDDEN), "model.norm.weight": 1 + rand(HIDDEN, scale=0.1),
               "lm_head.weight": rand(vocab, HIDDEN)}
    for i in range(LAYERS):
        pre = f"model.layers.{i}."
        weights.update({pre + "self_attn.W_pack.weight": rand(3 * HIDDEN, HIDDEN, scale=0.2),
                        pre + "self_attn.o_proj.weight": rand(HIDDEN, HIDDEN, scale=0.2),
                        pre + "mlp.gate_proj.weight": rand(2 * HIDDEN, HIDDEN, scale=0.2),
                        pre + "mlp.up_proj.weight": rand(2 * HIDDEN, HIDDEN, scale=0.2),
                        pre + "mlp.down_proj.weight": rand(HIDDEN, 2 * HIDDEN, scale=0.2),
                        pre + "input_layernorm.weight": 1 + rand(HIDDEN, scale=0.1),
                        pre + "post_attention_layernorm.weight": 1 + rand(HIDDEN, scale=0.1)})
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def build_model(family: str, out_dir) -> Path:
    """A tiny model + tokenizer of `family` (a --model_type): the real fixture of a remote-code family (out_dir
    unused), else a random native model written into out_dir, with the same weights every time."""
    import torch
    from transformers import AutoModelForCausalLM

    if family not in FAMILIES:
        raise KeyError(f"no tiny model for {family!r}; known: {', '.join(FAMILIES)}")
    if family in REAL:
        return real_fixture(family)
    if family == "baichuan":  # Baichuan-7B's layout (converts to native LLaMA) with Baichuan's real tokenizer
        return build_baichuan_7b(Path(out_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_native_config(family, len(tok), ids))
    model.save_pretrained(out)
    return out

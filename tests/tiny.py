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

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REMOTE_TINY = FIXTURES / "remote_tiny"

# One tiny stand-in per --model_type, keeping the family's real module names (see unitune/models.py).
FAMILIES = ["llama", "chatglm", "bloom", "moss", "internlm", "baichuan", "qwen2", "mistral", "auto"]
REMOTE_CLASSES = {  # families whose stand-in is remote code: (config class, causal-LM class)
    "chatglm": ("TinyChatGLMConfig", "TinyChatGLMForConditionalGeneration"),
    "baichuan": ("TinyBaichuanConfig", "TinyBaichuanForCausalLM"),
}
HIDDEN, LAYERS, HEADS = 32, 2, 4


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
    if family == "moss":  # MOSS is the CodeGen architecture (qkv_proj under attn, fc_in / fc_out)
        return tf.CodeGenConfig(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, rotary_dim=4,
                                n_positions=512, n_ctx=512, tie_word_embeddings=False, **ids)
    raise KeyError(family)


def build_model(family: str, out_dir) -> Path:
    """Write a tiny random model + tokenizer of `family` (a --model_type) into out_dir; same weights every time.

    Native transformers classes where their module names match the family's; ChatGLM and Baichuan get the
    remote-code stand-in of tests/fixtures/remote_tiny (config.json `auto_map`, needs trust_remote_code).
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in FAMILIES:
        raise KeyError(f"no tiny model for {family!r}; known: {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if family in REMOTE_CLASSES:
        config_cls, model_cls = REMOTE_CLASSES[family]
        for src in REMOTE_TINY.glob("*.py"):
            shutil.copy(src, out / src.name)
        config = {"model_type": family, "architectures": [model_cls], "naming": family, "vocab_size": len(tok),
                  "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS,
                  "num_attention_heads": HEADS, "auto_map": {
                      "AutoConfig": f"configuration_tiny_remote.{config_cls}",
                      "AutoModel": "modeling_tiny_remote.TinyRemoteModel",
                      "AutoModelForCausalLM": f"modeling_tiny_remote.{model_cls}"}, **ids}
        (out / "config.json").write_text(json.dumps(config, indent=2))
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out, trust_remote_code=True),
                                                 trust_remote_code=True)
    else:
        model = AutoModelForCausalLM.from_config(_native_config(family, len(tok), ids))
    model.save_pretrained(out)
    return out

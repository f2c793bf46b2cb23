"""The --model_type registry: what differs between model families is data, so it is one table."""

from __future__ import annotations

from dataclasses import dataclass

from unitune.errors import UnituneError


@dataclass(frozen=True)
class ModelSpec:
    """How one model family loads, what PEFT methods wrap, and how it is prompted.

    attention / mlp are the last name of the per-layer attention and feed-forward modules
    (e.g. `model.layers.3.self_attn`); bottleneck adapters are placed after or beside them.
    """

    name: str
    lora_targets: tuple[str, ...]
    attention: str
    mlp: str
    template: str
    remote_code: bool = False  # official checkpoints ship their own Python code (whether it runs: the family)
    family: str = ""  # unitune/families/<family>.py loads its real checkpoints (conversion or named patches)
    # config.json model_types this entry loads (its own format first, then the native one it converts to);
    # empty: any. A checkpoint of another type is refused, and `auto` picks the entry whose own format it is.
    config_types: tuple[str, ...] = ()
    pad_fix: str = "eos"  # what becomes pad when the tokenizer has none: eos | unk | id0
    supports_kbit: bool = True
    supports_prefix: bool = True
    supports_gradient_checkpointing: bool = True
    ia3_feedforward: tuple[str, ...] = ()  # modules whose inputs IA3 scales (feed-forward)
    notes: str = ""


_SPECS = [
    ModelSpec("llama", ("q_proj", "v_proj"), "self_attn", "mlp", "alpaca",
              ia3_feedforward=("down_proj",), notes="LLaMA 1/2/3, Vicuna, the embedded default"),
    # converted to transformers' GlmForCausalLM: q/k/v/o, gate_up_proj, down_proj (the tokenizer's code runs)
    ModelSpec("chatglm", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "chatglm", remote_code=True,
              config_types=("chatglm", "glm"), family="chatglm", ia3_feedforward=("down_proj",),
              notes="ChatGLM2-6B / ChatGLM3-6B base, as native Glm (the checkpoint's tokenizer code runs)"),
    ModelSpec("chatglm3", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "chatglm3", remote_code=True,
              config_types=("chatglm", "glm"), family="chatglm", ia3_feedforward=("down_proj",),
              notes="ChatGLM3-6B chat: ChatGLM2's architecture, ChatGLM3's role-token chat format"),
    ModelSpec("bloom", ("query_key_value",), "self_attention", "mlp", "alpaca",
              ia3_feedforward=("dense_4h_to_h",), notes="BLOOM / BLOOMZ"),
    ModelSpec("moss", ("qkv_proj",), "attn", "mlp", "moss", remote_code=True, config_types=("moss", "codegen"), family="moss",
              ia3_feedforward=("fc_out",), notes="MOSS as native CodeGen (the checkpoint's tokenizer code runs)"),
    ModelSpec("internlm", ("q_proj", "v_proj"), "self_attn", "mlp", "internlm", remote_code=True, config_types=("internlm", "llama"), family="internlm",
              ia3_feedforward=("down_proj",), notes="InternLM (v1) as native LLaMA with attention biases"),
    ModelSpec("internlm2", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "internlm2", remote_code=True,
              config_types=("internlm2", "llama"), family="internlm2", ia3_feedforward=("down_proj",),
              notes="InternLM2 / 2.5 as native LLaMA (fused wqkv split; the checkpoint's tokenizer code runs)"),
    # prefix tuning: Baichuan's own code indexes the KV cache as tuples, peft 0.21 hands it a DynamicCache
    ModelSpec("baichuan", ("W_pack",), "self_attn", "mlp", "baichuan", remote_code=True, config_types=("baichuan",), family="baichuan",
              supports_prefix=False, ia3_feedforward=("down_proj",), notes="Baichuan 1/2 (its own modeling code runs; fused W_pack)"),
    ModelSpec("qwen2", ("q_proj", "v_proj"), "self_attn", "mlp", "chatml",
              ia3_feedforward=("down_proj",), notes="Qwen1.5 / Qwen2 / Qwen2.5"),
    ModelSpec("mistral", ("q_proj", "v_proj"), "self_attn", "mlp", "mistral",
              ia3_feedforward=("down_proj",), notes="Mistral / Mixtral-style dense"),
    ModelSpec("auto", (), "self_attn", "mlp", "",
              notes="any causal LM transformers loads; LoRA targets all linear layers unless given; the tokenizer's "
                    "own chat template where it ships one, else alpaca"),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def detect_model_spec(config_type: str | None) -> ModelSpec | None:
    """The entry whose own checkpoint format is `config_type` (config.json model_type), if any."""
    return next((spec for spec in _SPECS if spec.config_types[:1] == (config_type,)), None)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnituneError(f"unknown --model_type {name!r}; choose one of: {', '.join(MODELS)}") from None

"""The --model_type registry: what differs between model families is data, so it is one table."""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    # LoRA targets where a checkpoint of this entry converts to a native class while others run their own code
    # (Baichuan 7B vs 13B); a native model also takes prefix tuning
    native_targets: tuple[str, ...] = ()
    notes: str = ""


_SPECS = [
    ModelSpec("llama", ("q_proj", "v_proj"), "self_attn", "mlp", "alpaca",
              ia3_feedforward=("down_proj",), notes="LLaMA 1/2/3, Vicuna, the embedded default"),
    # converted to transformers' GlmForCausalLM: q/k/v/o, gate_up_proj, down_proj (the tokenizer's code runs).
    # One checkpoint format (config.json model_type "chatglm"), three chat formats: `auto` tells them apart by the
    # tokenizer (unitune.families.chatglm.variant)
    ModelSpec("chatglm", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "chatglm", remote_code=True,
              config_types=("chatglm", "glm"), family="chatglm", ia3_feedforward=("down_proj",),
              notes="ChatGLM2-6B (and ChatGLM3-6B base) as native Glm (the checkpoint's tokenizer code runs)"),
    ModelSpec("chatglm3", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "chatglm3", remote_code=True,
              config_types=("chatglm", "glm"), family="chatglm", ia3_feedforward=("down_proj",),
              notes="ChatGLM3-6B chat: ChatGLM2's architecture, ChatGLM3's role-token chat format"),
    ModelSpec("glm4", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "glm4", remote_code=True,
              config_types=("chatglm", "glm", "glm4"), family="glm4", ia3_feedforward=("down_proj",),
              notes="GLM-4-9B / GLM-4-9B-Chat (chatglm format, tiktoken tokenizer) as native Glm; its -hf release "
                    "is native Glm already, GLM-4-0414 native Glm4"),
    ModelSpec("bloom", ("query_key_value",), "self_attention", "mlp", "alpaca",
              ia3_feedforward=("dense_4h_to_h",), notes="BLOOM / BLOOMZ"),
    ModelSpec("moss", ("qkv_proj",), "attn", "mlp", "moss", remote_code=True, config_types=("moss", "codegen"), family="moss",
              ia3_feedforward=("fc_out",), notes="MOSS as native CodeGen (the checkpoint's tokenizer code runs)"),
    ModelSpec("internlm", ("q_proj", "v_proj"), "self_attn", "mlp", "internlm", remote_code=True, config_types=("internlm", "llama"), family="internlm",
              ia3_feedforward=("down_proj",), notes="InternLM (v1) as native LLaMA with attention biases"),
    ModelSpec("internlm2", ("q_proj", "k_proj", "v_proj"), "self_attn", "mlp", "internlm2", remote_code=True,
              config_types=("internlm2", "llama"), family="internlm2", ia3_feedforward=("down_proj",),
              notes="InternLM2 / 2.5 as native LLaMA (fused wqkv split; the checkpoint's tokenizer code runs)"),
    # Baichuan 1 and 2 share the checkpoint format (model_type "baichuan", fused W_pack); `auto` tells them apart by
    # the modeling file's NormHead (unitune.families.baichuan.variant). The 7B models (RoPE) convert to native
    # LLaMA (targets: native_targets); the 13B ones (ALiBi) run their own code, where prefix tuning cannot work
    # (it indexes the KV cache as tuples, peft 0.21 hands it a DynamicCache)
    ModelSpec("baichuan", ("W_pack",), "self_attn", "mlp", "baichuan", remote_code=True,
              config_types=("baichuan", "llama"), family="baichuan", native_targets=("q_proj", "k_proj", "v_proj"),
              supports_prefix=False, ia3_feedforward=("down_proj",),
              notes="Baichuan-7B (native LLaMA) / Baichuan-13B-Base/Chat (its own code)"),
    ModelSpec("baichuan2", ("W_pack",), "self_attn", "mlp", "baichuan2", remote_code=True,
              config_types=("baichuan", "llama"), family="baichuan2", native_targets=("q_proj", "k_proj", "v_proj"),
              supports_prefix=False, ia3_feedforward=("down_proj",),
              notes="Baichuan2-7B (native LLaMA, NormHead folded in) / Baichuan2-13B (its own code, ALiBi)"),
    ModelSpec("qwen2", ("q_proj", "v_proj"), "self_attn", "mlp", "chatml",
              ia3_feedforward=("down_proj",), notes="Qwen1.5 / Qwen2 / Qwen2.5"),
    ModelSpec("mistral", ("q_proj", "v_proj"), "self_attn", "mlp", "mistral",
              ia3_feedforward=("down_proj",), notes="Mistral / Mixtral-style dense"),
    ModelSpec("auto", (), "self_attn", "mlp", "",
              notes="any causal LM transformers loads; LoRA targets all linear layers unless given; the tokenizer's "
                    "own chat template where it ships one, else alpaca"),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def detect_model_spec(config: dict, path: str) -> ModelSpec | None:
    """The entry whose own checkpoint format is config.json's model_type, if any; where several entries share that
    format (ChatGLM2 / ChatGLM3 / GLM-4, Baichuan / Baichuan2), the family module's `variant` names the one."""
    candidates = [spec for spec in _SPECS if spec.config_types[:1] == (config.get("model_type"),)]
    if len(candidates) > 1:
        from unitune.families import family_module

        name = family_module(candidates[0].family).variant(config, path)
        return MODELS[name]
    return candidates[0] if candidates else None


def for_checkpoint(spec: ModelSpec, native: bool) -> ModelSpec:
    """The entry as it applies to one checkpoint: one that loads as a native class (converted, or native already,
    e.g. a merged model unitune wrote) takes the native targets and prefix tuning."""
    if native and spec.native_targets:
        return replace(spec, lora_targets=spec.native_targets, supports_prefix=True)
    return spec


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnituneError(f"unknown --model_type {name!r}; choose one of: {', '.join(MODELS)}") from None

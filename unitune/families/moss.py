"""MOSS (fnlp/moss-moon-003-sft and its siblings): the CodeGen architecture under the same weight names, so only
the config is rewritten (to a native CodeGenConfig) and none of the checkpoint's modeling code runs (it calls
`get_head_mask`, which transformers 5 removed from PreTrainedModel). The tokenizer is the checkpoint's own
class, loaded with two patches."""

from __future__ import annotations

import hashlib
import json
import importlib.util
import sys
from pathlib import Path

from unitune.errors import UnituneError
from unitune.families import preload_attribute


def is_convertible(config: dict, path=None) -> bool:
    if config.get("model_type") != "moss":
        return False  # already native (e.g. a merged model unitune wrote)
    if config.get("wbits", 32) < 16:
        raise UnituneError(f"MOSS {config['wbits']}-bit GPTQ checkpoints are not supported: use the float16 "
                           f"moss-moon-003-sft (and --quantization_bit 4|8 to load it quantized)")
    return True


def native_config(config: dict, path=None):
    from transformers import CodeGenConfig

    keep = ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "rotary_dim", "n_inner",
            "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon",
            "initializer_range", "bos_token_id", "eos_token_id", "tie_word_embeddings")
    return CodeGenConfig(**{k: config[k] for k in keep if k in config}, architectures=["CodeGenForCausalLM"],
                         dtype="float32")


def native_weights(config: dict, weights: dict, path=None) -> dict:
    # the causal masks were saved as buffers; the native class builds its own
    return {k: v for k, v in weights.items() if not k.endswith((".attn.causal_mask", ".attn.masked_bias"))}


def _batch_decode(self, sequences, **kwargs):
    """transformers 5's batch_decode hands the whole batch to decode(), which MOSS's override reads as one sequence."""
    return [self.decode(seq, **kwargs) for seq in sequences]


def _tokens_to_string(original):
    def convert_tokens_to_string(self, tokens):
        """transformers 5's _decode hands added tokens (MOSS's whitespace runs, <eoh>, ...) to
        convert_tokens_to_string together with byte-level pieces, which MOSS maps byte by byte; 4.x decoded added
        tokens apart. Decode runs of ordinary pieces with MOSS's own code and keep added tokens as they are."""
        text, run = [], []
        for token in tokens:
            if token in self.added_tokens_encoder:
                text.append(original(self, run) if run else "")
                text.append(token)
                run = []
            else:
                run.append(token)
        text.append(original(self, run) if run else "")
        return "".join(text)

    convert_tokens_to_string._unitune_patched = True
    return convert_tokens_to_string


def load_tokenizer(path: str):
    """MOSS's tokenizer module imports `is_tf_available`, which transformers 5 removed with TensorFlow support, and
    its guarded `import tensorflow` makes transformers' remote-code import check demand tensorflow. Import the file
    directly, with `is_tf_available` present (answering False) only while it imports."""
    file = Path(path) / "tokenization_moss.py"
    if not file.is_file():
        raise UnituneError(f"{path}: no tokenization_moss.py (a MOSS checkpoint ships its tokenizer code)")
    name = "unitune_moss_tokenization_" + hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        import transformers.utils as utils

        added = not hasattr(utils, "is_tf_available")
        if added:
            utils.is_tf_available = lambda: False
        try:
            spec.loader.exec_module(module)
        finally:
            if added:
                del utils.is_tf_available
    cls = module.MossTokenizer
    preload_attribute(cls, "encoder", lambda vocab_file: json.loads(Path(vocab_file).read_text(encoding="utf-8")))
    cls.batch_decode = _batch_decode
    if not getattr(cls.convert_tokens_to_string, "_unitune_patched", False):
        cls.convert_tokens_to_string = _tokens_to_string(cls.convert_tokens_to_string)
    return cls.from_pretrained(path)

"""Per-family loading of real checkpoints whose published code predates transformers 5.

A ModelSpec names its family module here (`ModelSpec.family`). A family module may define:

- `is_convertible(config: dict, path) -> bool`, `native_config(config: dict, path) -> transformers
  PreTrainedConfig` and `native_weights(config: dict, weights, path) -> dict`: the checkpoint maps onto a native transformers architecture; it is converted once into
  ~/.cache/unitune/converted/ (keyed by the checkpoint's config and weight files) and loaded from there, so
  none of the checkpoint's modeling code runs (native SDPA, KV cache, gradient checkpointing come free);
- `load_tokenizer(path) -> tokenizer`: the checkpoint's tokenizer, with the named patches it needs;
- `after_load(model) -> model`: fixes applied to a model loaded with the checkpoint's own code;
- `variant(config: dict, path) -> str`: which of the registry entries sharing this checkpoint format
  (unitune.models) the checkpoint is, for `--model_type auto`.

Families without a module load as plain transformers checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from types import ModuleType

from unitune.errors import UnituneError

log = logging.getLogger(__name__)

FAMILIES = {  # family name -> module (imported only when a checkpoint of that family loads)
    "chatglm": "unitune.families.chatglm",
    "baichuan": "unitune.families.baichuan",
    "baichuan2": "unitune.families.baichuan2",
    "glm4": "unitune.families.glm4",
    "internlm": "unitune.families.internlm",
    "internlm2": "unitune.families.internlm2",
    "moss": "unitune.families.moss",
}
CONVERTER_VERSION = "1"  # bump when a conversion changes what it writes


def family_module(name: str) -> ModuleType | None:
    return importlib.import_module(FAMILIES[name]) if name else None


def read_config(path: str | Path, required: bool = True) -> dict:
    """config.json of a model directory; {} when absent and not required (the flag checks that run before the data
    is read leave a directory without one for the model load to report, after the data)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        if not required:
            return {}
        raise UnituneError(f"{path}: no config.json, not a model directory")
    return json.loads(file.read_text())


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnituneError(f"{path}: no *.safetensors weights (unitune converts {path.name} only from safetensors)")
    return files


def read_weights(path: str | Path) -> dict:
    from safetensors.torch import load_file

    weights: dict = {}
    for file in _weight_files(Path(path)):
        weights.update(load_file(str(file)))
    return weights


def _cache_root() -> Path:
    return Path(os.environ.get("UNITUNE_CONVERTED_DIR", Path.home() / ".cache" / "unitune" / "converted"))


def converted(path: str | Path, family: str) -> Path:
    """The native-transformers copy of checkpoint `path`, converted once and reused while it is unchanged."""
    from safetensors.torch import save_file

    module = family_module(family)
    src = Path(path)
    config = read_config(src)
    digest = hashlib.sha256(f"{CONVERTER_VERSION}|{family}|{json.dumps(config, sort_keys=True)}".encode())
    for file in _weight_files(src):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out = _cache_root() / f"{family}-{digest.hexdigest()[:16]}"
    if (out / "config.json").is_file():
        return out
    native = module.native_config(config, src)
    weights = {k: v.contiguous() for k, v in module.native_weights(config, read_weights(src), src).items()}
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    native.save_pretrained(tmp)
    try:
        tmp.replace(out)  # atomic: a directory with a config.json is a complete conversion
    except OSError:  # another process converted it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s (%s) to native %s in %s", src, family, native.model_type, out)
    return out


def load_tokenizer(family: str, path: str):
    """The family's tokenizer (None: AutoTokenizer suffices). Registered for AutoTokenizer, so a tokenizer saved
    beside an adapter or a merged model carries its class file and `auto_map` and loads again."""
    module = family_module(family)
    if module is None or not hasattr(module, "load_tokenizer") or not any(Path(path).glob("tokenization_*.py")):
        return None
    tokenizer = module.load_tokenizer(path)
    type(tokenizer).register_for_auto_class("AutoTokenizer")
    keep_bos_eos_flags(type(tokenizer))
    return tokenizer


def keep_bos_eos_flags(cls: type) -> None:
    """transformers 5's save_pretrained drops add_bos_token / add_eos_token from tokenizer_config.json (a fast
    tokenizer keeps them in its post-processor); a python tokenizer whose __init__ defaults them otherwise (Baichuan's
    add_bos_token=True against its checkpoint's false) reloads changed. Write them back after saving."""
    if getattr(cls, "_unitune_keeps_flags", False):
        return
    original = cls.save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = original(self, save_directory, *args, **kwargs)
        file = Path(save_directory) / "tokenizer_config.json"
        if file.is_file():
            config = json.loads(file.read_text(encoding="utf-8"))
            for flag in ("add_bos_token", "add_eos_token"):
                if isinstance(getattr(self, flag, None), bool):
                    config[flag] = getattr(self, flag)
            file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        return saved

    cls.save_pretrained = save_pretrained
    cls._unitune_keeps_flags = True


def converts(family: str, path: str) -> bool:
    """Whether this checkpoint is in a format its family converts to a native transformers class (a checkpoint
    that already is native, e.g. a merged model unitune wrote, is not)."""
    module = family_module(family)
    return (module is not None and hasattr(module, "native_config")
            and module.is_convertible(read_config(path, required=False), Path(path)))


def model_source(family: str, path: str) -> str:
    """The directory the model loads from: the native conversion, or the checkpoint itself."""
    return str(converted(path, family)) if converts(family, path) else path


def checkpoint_code(family: str, path: str) -> list[str]:
    """Which of the checkpoint's own Python files will run (empty: none; --trust_remote_code is then not needed).
    Reads only JSON, so it is answered before torch is imported."""
    module = family_module(family)
    code = []
    if not converts(family, path) and "auto_map" in read_config(path, required=False):
        code.append("modeling")
    tokenizer_config = Path(path) / "tokenizer_config.json"
    own_tokenizer = module is not None and hasattr(module, "load_tokenizer") and any(Path(path).glob("tokenization_*.py"))
    if own_tokenizer or (tokenizer_config.is_file() and "auto_map" in json.loads(tokenizer_config.read_text())):
        code.append("tokenizer")
    return code


def after_load(family: str, model):
    module = family_module(family)
    return module.after_load(model) if module is not None and hasattr(module, "after_load") else model


def preload_attribute(cls: type, attribute: str, make) -> None:
    """transformers 5's PreTrainedTokenizer.__init__ calls get_vocab() (to register special tokens) before a
    sentencepiece subclass written for 4.x has loaded its vocabulary: set `attribute` = make(vocab_file) first.
    Patched on the checkpoint's own dynamically loaded class only."""
    if getattr(cls, "_unitune_preloads", False):
        return
    original = cls.__init__

    def __init__(self, vocab_file=None, *args, **kwargs):
        setattr(self, attribute, make(vocab_file))
        original(self, vocab_file, *args, **kwargs)

    cls.__init__ = __init__
    cls._unitune_preloads = True


def remote_class(path: str, reference: str):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(reference, path)

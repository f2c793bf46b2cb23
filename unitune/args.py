"""Flags of every front-end, as dataclasses, merged from presets < --config YAML < command line.

Nothing heavy is imported here so `--help` answers at once.
"""

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from unitune.errors import UnituneError



def flag(default: Any = None, help: str = "", aliases: tuple[str, ...] = (), **argparse_kwargs: Any) -> Any:
    """A dataclass field that knows its command-line help and its alternative spellings."""
    meta = {"help": help, "aliases": aliases, "argparse": argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelArgs:
    model_type: str = flag("llama", "model family from the registry (see unitune/models.py), or 'auto'")
    model_name_or_path: Optional[str] = flag(None, "base model directory; default: the embedded tiny model",
                                             aliases=("--base_model",))
    adapter: Optional[str] = flag(None, "trained adapter directory to load on the base",
                                  aliases=("--lora_dir", "--adapter_name_or_path", "--lora_weights"))
    template: Optional[str] = flag(None, "prompt template from templates/*.json; default: the model type's")
    quantization_bit: Optional[int] = flag(None, "load the base in 4 or 8 bits (bitsandbytes)", choices=[4, 8])
    compute_dtype: str = flag("auto", "dtype for weights and compute; auto: bf16 on GPUs with bf16 (else fp16), on "
                              "CPUs with native bf16 (AMX, AVX512-BF16) bf16 for training, otherwise fp32",
                              choices=["auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"])
    double_quant: bool = flag(True, "nested quantization of the 4-bit constants")
    quant_type: str = flag("nf4", "4-bit data type", choices=["nf4", "fp4"])
    trust_remote_code: bool = flag(False, "allow running the checkpoint's own Python code")

    @property
    def base_path(self) -> str:
        from unitune.paths import embedded_base

        return self.model_name_or_path or str(embedded_base())


@dataclass
class DataArgs:
    data: list = flag(["unitune-synth"], "dataset names from data/dataset_info.json and/or file paths",
                      aliases=("--dataset", "--data_path"), nargs="+")
    eval_data: Optional[list] = flag(None, "held-out sets for exact-match accuracy of base and tuned model; "
                                     "default: the eval files the registered datasets name", nargs="+")
    eval_samples: int = flag(200, "at most this many held-out records are scored")
    eval_base: bool = flag(True, "also score the untuned base model (false: e.g. one of many runs on one base)")
    eval_max_new_tokens: Optional[int] = flag(None, "most tokens per held-out answer; default min(256, --cutoff_len)")
    eval_benchmarks: Optional[list] = flag(None, "benchmarks (mmcu, ceval, cmmlu, ie) run on the tuned model at the "
                                           "end, added to results.json", nargs="+")
    eval_benchmark_dir: Optional[str] = flag(None, "folder holding <benchmark>/ data for --eval_benchmarks (ie: "
                                             "optional ie.jsonl); default --data_dir, $UNITUNE_DATA_DIR or "
                                             "~/.cache/unitune/data")
    cutoff_len: int = flag(512, "maximum tokens per example; longer ones are truncated")
    val_set_size: float = flag(0, "validation split: a count (>=1) or a fraction (<1)")
    train_on_inputs: bool = flag(False, "also compute the loss on the prompt tokens")
    packing: Optional[bool] = flag(None, "pack several examples into each --cutoff_len row, positions restarting and "
                                   "no attention across examples (checked on the model before training); default: "
                                   "on where the method and the model's attention allow it", aliases=("--neat_packing",))
    max_samples: Optional[int] = flag(None, "use at most this many training records per dataset")
    cache_dir: Optional[str] = flag(None, "tokenized-data cache; default ~/.cache/unitune/tokenized")
    preprocessing_num_workers: Optional[int] = flag(None, "worker processes that normalize and tokenize the "
                                                    "data (datasets map num_proc); default: this one process, "
                                                    "the tokenizer on every core", aliases=("--num_proc",))
    streaming: bool = flag(False, "read and tokenize while training, never the whole data at once (corpora "
                           "larger than memory); needs --max_steps")
    buffer_size: int = flag(16384, "--streaming: examples in the shuffle buffer")
    data_dir: Optional[str] = flag(None, "where registered datasets that unitune does not ship (Alpaca-CoT's, ...) "
                                   "are found and fetched to; default $UNITUNE_DATA_DIR or ~/.cache/unitune/data")


@dataclass
class PeftArgs:
    peft_type: str = flag("lora", "PEFT method from the registry, or a preset peft/<name>.yaml",
                          aliases=("--finetuning_type",))
    lora_r: int = flag(8, "LoRA rank")
    lora_alpha: float = flag(16, "LoRA scaling numerator")
    lora_dropout: float = flag(0.0, "dropout on the LoRA input (Alpaca-CoT used 0.05)")
    lora_target_modules: Optional[list] = flag(None, "module names LoRA wraps; default: the model type's",
                                               aliases=("--lora_target",), nargs="+")
    use_dora: bool = flag(False, "weight-decomposed LoRA (DoRA)")
    use_rslora: bool = flag(False, "rank-stabilized LoRA scaling alpha/sqrt(r)")
    # AdaLoRA (Alpaca-CoT's --lora_r is the target rank when --adalora_target_r is not given)
    adalora_init_r: int = flag(12, "AdaLoRA: initial rank of every matrix")
    adalora_target_r: Optional[int] = flag(None, "AdaLoRA: average target rank; default --lora_r")
    adalora_tinit: Optional[int] = flag(None, "AdaLoRA: warm-up steps before pruning; default 10% of steps")
    adalora_tfinal: Optional[int] = flag(None, "AdaLoRA: final fine-tuning steps at the target budget; "
                                         "default 20% of steps")
    adalora_delta_t: int = flag(1, "AdaLoRA: steps between two budget allocations")
    # prompt-learning methods
    num_virtual_tokens: int = flag(20, "virtual tokens of prefix / p-tuning / prompt tuning")
    prefix_projection: bool = flag(False, "prefix tuning: reparameterize the prefix through an MLP")
    prompt_encoder_hidden_size: Optional[int] = flag(None, "hidden size of the prefix / p-tuning encoder")
    p_tuning_encoder: str = flag("mlp", "p-tuning prompt encoder", choices=["mlp", "lstm"])
    prompt_init: str = flag("random", "prompt tuning initialization", choices=["random", "text"])
    prompt_init_text: Optional[str] = flag(None, "text whose tokens initialize the prompt (with --prompt_init text)")
    # bottleneck adapters (SadapterH / SadapterP / P-adapter)
    bottleneck_size: int = flag(64, "adapter bottleneck width")
    adapter_non_linearity: str = flag("relu", "adapter activation", choices=["relu", "tanh", "gelu", "silu"])
    adapter_dropout: float = flag(0.0, "dropout inside the adapter")
    adapter_scaling: str = flag("1.0", "adapter output scale: a float or 'learned'")
    adapter_init: str = flag("bert", "adapter initialization", choices=["bert", "zero_up"])
    adapter_targets: Optional[list] = flag(None, "module names adapters attach to; default: the model type's "
                                           "attention / MLP modules", nargs="+")
    # IA3, full and freeze
    ia3_target_modules: Optional[list] = flag(None, "IA3: modules whose activations are rescaled", nargs="+")
    ia3_feedforward_modules: Optional[list] = flag(None, "IA3: the feed-forward subset (scaled on input)",
                                                   nargs="+")
    freeze_trainable_layers: int = flag(2, "freeze: train only the last N decoder layers")
    freeze_trainable_modules: Optional[list] = flag(None, "freeze: train only parameters whose names contain "
                                                    "one of these", nargs="+")


@dataclass
class TrainArgs:
    output_dir: Optional[str] = flag(None, "where the adapter and logs go; default output/<model_type>-<peft_type>")
    per_gpu_train_batch_size: int = flag(8, "batch size per device",
                                         aliases=("--per_device_train_batch_size", "--micro_batch_size"))
    gradient_accumulation_steps: int = flag(1, "micro-batches per optimizer step")
    global_batch_size: Optional[int] = flag(None, "examples per optimizer step over all processes; sets "
                                            "--gradient_accumulation_steps for the world size, so a run keeps its "
                                            "batch on 1 or 8 GPUs")
    epochs: float = flag(3, "passes over the training data", aliases=("--num_train_epochs", "--num_epochs"))
    max_steps: int = flag(-1, "stop after this many optimizer steps (overrides --epochs)")
    learning_rate: float = flag(3e-4, "peak learning rate")
    lr_scheduler_type: str = flag("cosine", "transformers scheduler name")
    warmup_ratio: float = flag(0.0, "fraction of steps for linear warm-up")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    max_grad_norm: float = flag(1.0, "gradient clipping")
    gradient_checkpointing: bool = flag(False, "recompute activations to save memory")
    group_by_length: bool = flag(False, "batch examples of similar length together (less padding when unpacked)")
    save_steps: Optional[int] = flag(None, "checkpoint interval; default: about 5 per run, never 0")
    logging_steps: Optional[int] = flag(None, "loss logging interval; default: about 50 per run, never 0")
    save_total_limit: int = flag(2, "checkpoints kept")
    seed: int = flag(42, "seed for shuffling, splitting and initialization")
    resume_from_checkpoint: Optional[str] = flag(None, "checkpoint to resume; bare flag: the latest in output_dir",
                                                 nargs="?", const="latest")
    report_to: str = flag("none", "none, tensorboard or wandb")
    local_rank: int = flag(-1, "set by torchrun / deepspeed launchers", aliases=("--local-rank",))
    dataloader_num_workers: int = flag(0, "worker processes for batching")
    deepspeed: Optional[str] = flag(None, "DeepSpeed config: a JSON path, or one shipped in configs/: ds_zero2, "
                                    "ds_zero3, ds_zero2_offload, ds_zero3_offload (GPUs only)")


@dataclass
class GenerationArgs:
    """Decoding flags shared by generate.py, server.py, web.py and evaluation; None keeps the preset's value."""

    decoding: str = flag("greedy", "decoding preset: greedy, alpaca_cot, beam, contrastive, sample")
    max_new_tokens: int = flag(256, "most tokens generated per answer")
    do_sample: Optional[bool] = flag(None, "sample instead of searching")
    temperature: Optional[float] = flag(None, "sampling temperature")
    top_p: Optional[float] = flag(None, "nucleus sampling mass")
    top_k: Optional[int] = flag(None, "sample (or contrastive-search) among the k most likely tokens")
    num_beams: Optional[int] = flag(None, "beam search width")
    repetition_penalty: Optional[float] = flag(None, "penalty on repeated tokens (1.0 = none)")
    no_repeat_ngram_size: Optional[int] = flag(None, "forbid repeating n-grams of this size")
    penalty_alpha: Optional[float] = flag(None, "contrastive search degeneration penalty")

    def generate_kwargs(self) -> dict:
        """generate() kwargs: the preset, overridden flag by flag."""
        from unitune.generation import decoding_config

        overrides = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("decoding", "max_new_tokens")}
        return decoding_config(self.decoding, **overrides)


def _str2bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base_type(hint: Any) -> Any:
    """Strip Optional[...] from a type hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, no usage dump
        raise UnituneError(f"{self.prog}: {message} (see --help)")


def build_parser(groups: list[type], prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, allow_abbrev=False,
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of flags; command-line flags override it")
    for group in groups:
        section = parser.add_argument_group(group.__name__.replace("Args", "").lower())
        hints = typing.get_type_hints(group)
        for f in dataclasses.fields(group):
            kind = _base_type(hints[f.name])
            kwargs = dict(f.metadata.get("argparse", {}))
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            # argparse %-formats help text: a literal "10% of steps" would crash --help
            kwargs["help"] = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
            if kind is bool:
                kwargs.update(nargs="?", const=True, type=_str2bool)
            elif kind is list or typing.get_origin(kind) is list:
                kwargs.setdefault("nargs", "+")
            else:
                kwargs.setdefault("type", kind)
            names = [f"--{f.name}", *f.metadata.get("aliases", ())]
            section.add_argument(*names, dest=f.name, **kwargs)
    return parser


def _coerce(value: Any, kind: Any, where: str) -> Any:
    kind = _base_type(kind)
    if value is None:
        return None
    if kind is bool:
        return _str2bool(value) if not isinstance(value, bool) else value
    if kind is list or typing.get_origin(kind) is list:
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, float) and not isinstance(value, kind):
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise UnituneError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    return value


def load_yaml(path: str) -> dict:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UnituneError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UnituneError(f"{path}:{line} is not valid YAML") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UnituneError(f"{path}: expected a mapping of flag names to values")
    return loaded


ADAPTER_CONTEXT = ("model_type", "model_name_or_path", "template")  # what an adapter's run recorded and reuses


def adapter_context(values: dict) -> dict:
    """The base, model type and template an adapter (--adapter / --lora_dir) was trained with, read from the
    unitune_config.yaml its run wrote; only the fields it recorded (an embedded-default base records none)."""
    adapter = values.get("adapter")
    if not adapter or not (Path(adapter) / "unitune_config.yaml").is_file():
        return {}
    recorded = load_yaml(str(Path(adapter) / "unitune_config.yaml"))
    return {key: recorded[key] for key in ADAPTER_CONTEXT if recorded.get(key) is not None}


def parse(groups: list[type], argv: Optional[list[str]], prog: str, description: str = "",
          presets: Optional[typing.Callable[[dict], dict]] = None) -> tuple[list[Any], set[str]]:
    """Parse argv into one instance per dataclass in `groups`.

    Priority, lowest first: dataclass defaults, `presets(values)` (e.g. a PEFT preset chosen by
    --peft_type), what the --adapter's unitune_config.yaml recorded (base, model type, template), the
    --config YAML, the command line. Returns the instances and the set of names
    the user gave explicitly (in YAML or on the command line).
    """
    parser = build_parser(groups, prog, description)
    given = vars(parser.parse_args(argv))
    known = {f.name: (g, f) for g in groups for f in dataclasses.fields(g)}
    values: dict[str, Any] = {}
    config_path = given.pop("config", None)
    if config_path:
        for key, value in load_yaml(config_path).items():
            key = str(key).replace("-", "_")
            if key == "config":
                continue
            if key not in known:
                raise UnituneError(f"{config_path}: unknown flag {key!r} (see --help)")
            group, f = known[key]
            values[key] = _coerce(value, typing.get_type_hints(group)[key], f"{config_path}: {key}")
    values.update(given)
    explicit = set(values)
    if ModelArgs in groups:  # an adapter carries its context; flags given (YAML or command line) win
        for key, value in adapter_context(values).items():
            values.setdefault(key, value)
    if presets is not None:
        for key, value in presets(values).items():
            if key not in values:
                if key not in known:
                    raise UnituneError(f"preset: unknown flag {key!r}")
                group, _ = known[key]
                values[key] = _coerce(value, typing.get_type_hints(group)[key], f"preset: {key}")
    instances = []
    for group in groups:
        names = {f.name for f in dataclasses.fields(group)}
        instances.append(group(**{k: v for k, v in values.items() if k in names}))
    from unitune.limits import check_flags  # the rules API requests obey too, before anything loads

    check_flags(*instances)
    return instances, explicit


def to_flat_dict(*instances: Any) -> dict:
    """The resolved flags, flat, ready to dump as a YAML that --config replays."""
    out: dict[str, Any] = {}
    for inst in instances:
        out.update(dataclasses.asdict(inst))
    return out

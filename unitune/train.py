"""One fine-tune run: flags -> checks -> data -> shared loader -> Trainer -> adapter dir + logs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from unitune import args as A
from unitune.distributed import is_main_process, main_process_first, world_size
from unitune.errors import UnituneError
from unitune.writable import check_output_dir

log = logging.getLogger("unitune")

GROUPS = [A.ModelArgs, A.DataArgs, A.PeftArgs, A.TrainArgs]
EMBEDDED_DEFAULTS = "unitune-tiny/unitune_defaults.yaml"  # under the models/ asset folder


def presets(values: dict) -> dict:
    """Flag values below --config and the command line: the PEFT preset and, when no model is named, the
    embedded model's tuned defaults."""
    from unitune.methods import read_preset
    from unitune.paths import asset

    embedded: dict[str, Any] = {}
    if not values.get("model_name_or_path"):
        embedded = A.load_yaml(str(asset("models", EMBEDDED_DEFAULTS)))
    peft_type = values.get("peft_type", embedded.get("peft_type", "lora"))
    preset = {k: v for k, v in read_preset(peft_type).items() if k != "method"}
    # The embedded defaults were tuned for one method: for it they win over its generic preset; any
    # other method keeps its own preset (e.g. prompt tuning's larger learning rate).
    if peft_type == embedded.get("peft_type"):
        return {**preset, **embedded}
    return {**embedded, **preset}


def parse(argv: list[str] | None):
    (model_args, data_args, peft_args, train_args), _ = A.parse(
        GROUPS, argv, prog="uniform_finetune.py",
        description="Fine-tune a causal LM with a PEFT method on instruction data.", presets=presets)
    if train_args.output_dir is None:
        train_args.output_dir = str(Path("output") / f"{model_args.model_type}-{peft_args.peft_type}")
    return model_args, data_args, peft_args, train_args


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def check_engines(train_args) -> None:
    """DeepSpeed and FSDP shard over GPUs: refused on a CPU-only machine, with the reason, before loading."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"  # set by `accelerate launch` with FSDP
    if not (train_args.deepspeed or fsdp):
        return
    import torch  # only now: a run without them must check its data before torch is even imported
    engine = "--deepspeed" if train_args.deepspeed else "FSDP (accelerate config)"
    if not torch.cuda.is_available():
        raise UnituneError(f"{engine} shards model states over GPUs and this machine has none: train with plain "
                           f"torchrun (gloo) here, or on a GPU machine")
    if train_args.deepspeed:
        from unitune.env import require_extra
        from unitune.paths import asset_dir

        require_extra("deepspeed", ("deepspeed",), "--deepspeed")
        path = Path(train_args.deepspeed)
        shipped = asset_dir("configs") / f"{train_args.deepspeed}.json"
        if not path.is_file() and shipped.is_file():
            train_args.deepspeed = str(shipped)
        elif not path.is_file():
            raise UnituneError(f"--deepspeed {train_args.deepspeed}: no such file, and not one of the shipped "
                               f"configs ({', '.join(sorted(p.stem for p in asset_dir('configs').glob('ds_*.json')))})")


def interval(given: int | None, total_steps: int, per_run: int) -> int:
    """A save/log interval: the user's, else about `per_run` per run; never 0 on a small data set."""
    if given is not None:
        if given < 1:
            raise UnituneError(f"intervals must be at least 1, got {given}")
        return given
    return max(1, total_steps // per_run)


def run(argv: list[str] | None = None) -> dict:
    model_args, data_args, peft_args, train_args = parse(argv)
    # ---- everything a user can get wrong is checked before the model loads or a file is written
    from unitune import data as D
    from unitune.loader import check_model_args
    from unitune.methods import resolve_method

    spec = check_model_args(model_args)
    method, _ = resolve_method(peft_args.peft_type)
    method.validate(spec, model_args, peft_args, train_args)
    check_output_dir(train_args.output_dir, "--output_dir")
    if train_args.report_to not in ("none", "tensorboard", "wandb"):
        raise UnituneError(f"--report_to {train_args.report_to!r}: choose none, tensorboard or wandb")
    if train_args.report_to != "none":
        from unitune.env import require_extra

        require_extra(train_args.report_to, (train_args.report_to,), f"--report_to {train_args.report_to}")
    check_engines(train_args)
    if train_args.global_batch_size is not None:
        per_pass = train_args.per_gpu_train_batch_size * world_size()
        if train_args.global_batch_size < 1 or train_args.global_batch_size % per_pass:
            raise UnituneError(f"--global_batch_size {train_args.global_batch_size} is not a multiple of "
                               f"--per_gpu_train_batch_size {train_args.per_gpu_train_batch_size} x "
                               f"{world_size()} process(es)")
        train_args.gradient_accumulation_steps = train_args.global_batch_size // per_pass
    if data_args.packing and not method.packable:
        raise UnituneError(f"--packing cannot be used with --peft_type {peft_args.peft_type}: it adds virtual "
                           f"tokens to every example, which a packed row cannot hold")
    resume = train_args.resume_from_checkpoint  # checked here: the Trainer would only fail after loading
    if resume == "latest" and not list(Path(train_args.output_dir).glob("checkpoint-*/trainer_state.json")):
        raise UnituneError(f"--resume_from_checkpoint: no checkpoint-* in {train_args.output_dir} to resume")
    if resume not in (None, "latest") and not Path(resume).is_dir():
        raise UnituneError(f"--resume_from_checkpoint {resume}: no such checkpoint directory")
    benchmarks = []
    if data_args.eval_benchmarks:
        from unitune.evaluation.cli import training_options

        benchmarks = training_options(data_args.eval_benchmarks, data_args.eval_benchmark_dir or data_args.data_dir,
                                      train_args.output_dir)
    check_streaming(data_args, train_args)
    paths = [p for name in data_args.data for p in D.resolve_all(name, data_dir=data_args.data_dir)]
    eval_paths = ([p for name in data_args.eval_data for p in D.resolve_all(name, data_dir=data_args.data_dir)]
                  if data_args.eval_data else D.eval_files(data_args.data))
    eval_records = [r for p in eval_paths for r in D.load_file(p)][: data_args.eval_samples]
    tokenized = prepare_data(model_args, data_args, train_args, paths)  # before the model: bad data stops here
    setup_logging()  # only now: bad data must leave exactly one error line, no progress lines before it
    for record in tokenized.log:
        logging.getLogger(record.name).handle(record)
    log.info("%s training records from %s and %d held-out records",
             "streaming" if data_args.streaming else f"read {tokenized.records}", ", ".join(data_args.data),
             len(eval_records))

    from unitune.loader import load
    from unitune.metrics import score_exact_match

    results: dict[str, Any] = {}
    max_new = data_args.eval_max_new_tokens or max(32, min(256, data_args.cutoff_len))
    if (eval_records or benchmarks) and data_args.eval_base and is_main_process():
        base = load(model_args, mode="infer")
        if eval_records:
            results["base_accuracy"], _ = score_exact_match(base.model, base.tokenizer, base.template, eval_records,
                                                            max_new)
            log.info("base exact-match accuracy: %.1f%% on %d held-out records", 100 * results["base_accuracy"],
                     len(eval_records))
        if benchmarks:
            results["base_benchmarks"] = run_benchmarks(benchmarks, base, model_args, max_new, "base")
        del base

    from transformers import set_seed

    set_seed(train_args.seed)  # before the method builds its weights: --seed also fixes their initialization
    loaded = load(model_args, mode="train", peft_args=peft_args, train_args=train_args)
    method = loaded.method or method  # --adapter: the saved adapter's kind decides callbacks and saving
    train_set, val_set = D.split(tokenized.examples, data_args.val_set_size, train_args.seed)
    # a stream is read while training: there is no whole set to pack (--streaming refuses an explicit --packing)
    packing = not data_args.streaming and decide_packing(data_args.packing, method, loaded.model, train_set,
                                                         model_args.model_type)
    if packing:
        from unitune.packing import pack

        rows = pack(train_set, data_args.cutoff_len)
        log.info("packed %d examples into %d rows of at most %d tokens", len(train_set), len(rows),
                 data_args.cutoff_len)
        train_set, val_set = rows, pack(val_set, data_args.cutoff_len)
    trainable, total = count_parameters(loaded.model)
    log.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / max(total, 1))

    trainer = build_trainer(loaded, method, peft_args, train_args, train_set, val_set, packing,
                            data_args.streaming)
    out = Path(train_args.output_dir)
    started = time.time()
    trainer.train(resume_from_checkpoint=True if resume == "latest" else resume)
    results["train_seconds"] = time.time() - started
    if train_args.report_to == "wandb":  # the callback leaves the run open; a later run would append to it
        import wandb

        wandb.finish()
    results["trainable_parameters"] = trainable
    results["packed"] = packing  # what the defaults decided, for this machine and model
    results["compute_dtype"] = "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else "float32"
    results["dropped_examples"] = tokenized.dropped
    history = [h for h in trainer.state.log_history if "loss" in h]
    results["final_loss"] = history[-1]["loss"] if history else None

    save_weights(loaded, method, trainer, out)  # every process: sharded states gather collectively
    if is_main_process():
        save_outputs(loaded, trainer, out, model_args, data_args, peft_args, train_args)
        if eval_records or benchmarks:  # the tuned model answers: inference mode, with its KV cache
            loaded.model.eval()
            loaded.model.config.use_cache = True
        from unitune.loader import autocast_for

        with autocast_for(loaded.model):  # the dtypes it trained in
            if eval_records:
                results["tuned_accuracy"], _ = score_exact_match(loaded.model, loaded.tokenizer, loaded.template,
                                                                 eval_records, max_new)
            if benchmarks:
                tuned_args = dataclasses.replace(model_args, adapter=str(out))  # names what answered, for the key
                results["benchmarks"] = run_benchmarks(benchmarks, loaded, tuned_args, max_new, "tuned")
        (out / "results.json").write_text(json.dumps(results, indent=2))
        report(results, len(eval_records), out)
    return results


def decide_packing(requested: bool | None, method, model, train_set: list, model_type: str) -> bool:
    """--packing as asked; unset, it is on wherever the method adds no virtual tokens and the isolation check
    passes on this model's attention path (a failed check then only logs, and the run trains unpacked)."""
    from unitune.packing import check_isolation

    if requested is False or (requested is None and not method.packable):
        return False
    try:
        check_isolation(model, train_set, model_type)
    except UnituneError as err:
        if requested:
            raise
        log.warning("training unpacked: %s", err)
        return False
    return True


def check_streaming(data_args, train_args) -> None:
    if not data_args.streaming:
        return
    if train_args.max_steps <= 0:
        raise UnituneError("--streaming reads the data while training and never knows its length: give --max_steps")
    if data_args.buffer_size < 1:
        raise UnituneError(f"--buffer_size {data_args.buffer_size}: must be at least 1")
    for flag, value in (("--val_set_size", data_args.val_set_size), ("--packing", data_args.packing),
                        ("--group_by_length", train_args.group_by_length)):
        if value:
            raise UnituneError(f"{flag} needs the whole data set in advance: it cannot be used with --streaming")


def prepare_data(model_args, data_args, train_args, paths: list):
    """The tokenized training data, before the model loads: cached Arrow examples, or a stream. One process
    tokenizes into the cache, the others then read it; log lines are kept for after the checks."""
    from unitune import data as D
    from unitune.loader import load_tokenizer_and_template

    catcher, data_log = _Lines(), logging.getLogger("unitune.data")
    saved = data_log.level, data_log.propagate
    data_log.addHandler(catcher)
    data_log.setLevel(logging.INFO)
    data_log.propagate = False
    try:
        with main_process_first():
            if not data_args.streaming:  # checked and normalized before torch or a tokenizer is imported
                D.load_records(paths, data_args.cache_dir, data_args.preprocessing_num_workers, data_args.max_samples,
                               load=False)
            tokenizer, template = load_tokenizer_and_template(model_args, "train")
            if data_args.streaming:
                stream = D.stream(paths, tokenizer, template, data_args.cutoff_len, data_args.train_on_inputs,
                                  data_args.buffer_size, train_args.seed, data_args.max_samples)
                tokenized = D.Tokenized(stream, 0, 0, False, "")  # counts unknown until it is read
            else:
                tokenized = D.prepare(paths, tokenizer, template, data_args.cutoff_len, data_args.train_on_inputs,
                                      data_args.cache_dir, data_args.preprocessing_num_workers, data_args.max_samples)
    finally:
        data_log.removeHandler(catcher)
        data_log.level, data_log.propagate = saved
    tokenized.log = catcher.records
    return tokenized


class _Lines(logging.Handler):
    """Keeps the data module's log lines until logging is set up (after every check has passed)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_benchmarks(benchmarks: list, loaded, model_args, max_new_tokens: int, label: str) -> dict:
    """--eval_benchmarks on a model in memory; each writes its report under <output_dir>/eval/<label>/<name>."""
    from unitune.evaluation.cli import evaluate_loaded

    scores = {}
    for opts in benchmarks:
        opts = dataclasses.replace(opts, output_dir=str(Path(opts.output_dir).parent / label / opts.benchmark))
        scores[opts.benchmark] = evaluate_loaded(opts, loaded, model_args, max_new_tokens, label)
    return scores


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _length_grouping(arguments_class, on: bool) -> dict:
    """transformers 5.24 replaced TrainingArguments.group_by_length with train_sampling_strategy."""
    if not on:
        return {}
    if "train_sampling_strategy" in arguments_class.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def build_trainer(loaded, method, peft_args, train_args, train_set, val_set, packing: bool = False,
                  streaming: bool = False):
    import torch
    from transformers import PrinterCallback, TrainingArguments

    from unitune.callbacks import ProgressBar
    from unitune.data import Collator
    from unitune.guards import guarded_trainer_class
    from unitune.packing import PackedCollator

    world = world_size()
    per_step = train_args.per_gpu_train_batch_size * train_args.gradient_accumulation_steps * world
    steps_per_epoch = 1 if streaming else max(1, math.ceil(len(train_set) / per_step))
    total_steps = train_args.max_steps if train_args.max_steps > 0 else math.ceil(train_args.epochs * steps_per_epoch)
    if train_args.report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")  # no hub or wandb.ai is reachable from here
    dtype = str(next(loaded.model.parameters()).dtype)
    targs = TrainingArguments(
        output_dir=train_args.output_dir,
        per_device_train_batch_size=train_args.per_gpu_train_batch_size,
        per_device_eval_batch_size=train_args.per_gpu_train_batch_size,
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        num_train_epochs=train_args.epochs, max_steps=total_steps,
        learning_rate=train_args.learning_rate, lr_scheduler_type=train_args.lr_scheduler_type,
        warmup_steps=math.ceil(train_args.warmup_ratio * total_steps), weight_decay=train_args.weight_decay,
        max_grad_norm=train_args.max_grad_norm, seed=train_args.seed, data_seed=train_args.seed,
        logging_steps=interval(train_args.logging_steps, total_steps, 50),
        save_steps=interval(train_args.save_steps, total_steps, 5),
        save_total_limit=train_args.save_total_limit, save_only_model=False,
        eval_strategy="steps" if val_set else "no",
        eval_steps=interval(train_args.save_steps, total_steps, 5) if val_set else None,
        report_to=train_args.report_to, disable_tqdm=True, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        bf16="bfloat16" in dtype, fp16="float16" in dtype and "bfloat16" not in dtype,
        dataloader_num_workers=train_args.dataloader_num_workers,
        **_length_grouping(TrainingArguments, train_args.group_by_length and not packing),  # packed rows are full
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps copies to a GPU
        ddp_find_unused_parameters=False if world > 1 else None,
        # without a GPU, torchrun's processes are a gloo group that accelerate only forms when told "cpu"
        use_cpu=not torch.cuda.is_available(), ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        deepspeed=train_args.deepspeed,
        # a stream's batches differ in length: each process reads its own share instead of rank 0 padding and
        # sending them all; a resumed run skips the batches it trained on, so the stream continues in place
        **({"accelerator_config": {"dispatch_batches": False}} if streaming else {}),
    )
    callbacks = [ProgressBar(), *method.callbacks(peft_args, total_steps)]
    collator = (PackedCollator if packing else Collator)(loaded.tokenizer.pad_token_id)
    # packed rows carry no attention mask: the Trainer counts non-padding tokens against the tokenizer's pad id
    trainer = guarded_trainer_class()(model=loaded.model, args=targs, train_dataset=train_set,
                                      eval_dataset=val_set or None, data_collator=collator, callbacks=callbacks,
                                      processing_class=loaded.tokenizer if packing else None)
    trainer.labelled_rows_only = method.packable  # prompt-learning methods shift positions by virtual tokens
    trainer.remove_callback(PrinterCallback)  # our bar shows the loss; raw log dicts would garble it
    return trainer


def save_weights(loaded, method, trainer, out: Path) -> None:
    """The adapter (or model): the method's own format, else through the Trainer, which gathers ZeRO-3 /
    FSDP shards and writes on the main process only."""
    if method.save is not None:
        if is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            method.save(loaded.model, out)
        return
    trainer.save_model(str(out))
    if is_main_process():
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; unitune_config.yaml replays the run


def save_outputs(loaded, trainer, out: Path, *groups) -> None:
    """Tokenizer, replayable config, loss log and loss curve beside the adapter."""
    import yaml

    from unitune.callbacks import plot_loss

    out.mkdir(parents=True, exist_ok=True)
    loaded.tokenizer.save_pretrained(out)
    config = A.to_flat_dict(*groups)
    config.pop("local_rank", None)
    config.pop("resume_from_checkpoint", None)
    (out / "unitune_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    history = trainer.state.log_history
    (out / "loss_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    plot_loss(history, out / "loss_curve.png")
    log.info("saved adapter, tokenizer, unitune_config.yaml, loss_log.jsonl and loss_curve.png to %s", out)


def report(results: dict, n_eval: int, out: Path) -> None:
    """The closing lines a user reads: time, loss and, when there was a held-out set, the accuracies."""
    print(f"training time: {results['train_seconds']:.1f} s, final loss: {results['final_loss']}")
    if "tuned_accuracy" in results:
        base, tuned = 100 * results.get("base_accuracy", 0.0), 100 * results["tuned_accuracy"]
        print(f"held-out exact-match accuracy ({n_eval} records): base {base:.1f}%  tuned {tuned:.1f}%  "
              f"({tuned - base:+.1f} points)")
    for name, entry in results.get("benchmarks", {}).items():
        base_entry = results.get("base_benchmarks", {}).get(name)
        before = f"base {100 * base_entry['overall']:.1f}  " if base_entry else ""
        print(f"{name} {entry['headline']}: {before}tuned {100 * entry['overall']:.1f}  ({entry['result']})")
    print(f"adapter saved to {out}")

"""Batch prediction (generate.py): answer every record of a data file, written as JSONL, resumable.

    python generate.py --data questions.jsonl --output answers.jsonl --lora_dir output/llama-lora
    python generate.py --interactive --lora_dir output/llama-lora      # one-shot REPL

Each output line is the input record plus `generate` (the answer), `_index` / `_hash` (which input
record it answers, so a re-run skips the records already done and notices a changed input file) and
`_settings` (the model, adapter, template, decoding and max_new_tokens that wrote it: a re-run with
other settings is refused instead of handing back answers of another model as its own).
Lines are appended and flushed batch by batch in generation order; once every record is done the file
is rewritten in input order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from unitune import args as A
from unitune.errors import UnituneError
from unitune.writable import check_output_file

log = logging.getLogger("unitune")

EXIT_WORDS = ("exit", "quit", ":q")


@dataclass
class PredictArgs:
    data: Optional[str] = A.flag(None, "JSON / JSONL / CSV / Parquet file, or a dataset name from "
                                 "data/dataset_info.json, whose records get answers",
                                 aliases=("--dataset", "--data_path"))
    output: Optional[str] = A.flag(None, "JSONL file of answered records; default "
                                   "output/generate/<data name>-<adapter or base name>.jsonl",
                                   aliases=("--output_file",))
    batch_size: int = A.flag(16, "prompts generated together (left-padded, grouped by length)")
    max_samples: Optional[int] = A.flag(None, "answer only the first N records")
    interactive: bool = A.flag(False, "read instructions from stdin and print each answer, until EOF or 'exit'")
    data_dir: Optional[str] = A.flag(None, "where registered datasets that unitune does not ship are found and "
                                     "fetched to; default $UNITUNE_DATA_DIR or ~/.cache/unitune/data")


GROUPS = [A.ModelArgs, A.GenerationArgs, PredictArgs]


def parse(argv: list[str] | None):
    (model_args, gen_args, predict_args), _ = A.parse(
        GROUPS, argv, prog="generate.py",
        description="Answer the records of a data file with a base model (and adapter), or chat one-shot.")
    if predict_args.interactive and predict_args.data:
        raise UnituneError("generate.py: --interactive reads stdin; drop --data (or --interactive)")
    if not predict_args.interactive and not predict_args.data:
        raise UnituneError("generate.py: give --data FILE|DATASET to answer, or --interactive")
    return model_args, gen_args, predict_args


# ---------------------------------------------------------------- records
def record_hash(raw: Any) -> str:
    """A short fingerprint of one input record, independent of key order."""
    text = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prompt_record(raw: Any, where: str) -> dict:
    """Normalize a record to prompt with: the reference answer is optional here.

    A conversation that ends on the user's turn gets an empty assistant turn, so the last user
    message becomes the instruction and the earlier turns the history.
    """
    from unitune.data import _ROLE, normalize

    if isinstance(raw, dict):
        for key in ("conversations", "messages"):
            messages = raw.get(key)
            if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
                last = messages[-1]
                if _ROLE.get(str(last.get("from", last.get("role", ""))).lower()) != "assistant":
                    empty = {"role": "assistant", "content": ""} if "role" in last else {"from": "gpt", "value": ""}
                    raw = {**raw, key: [*messages, empty]}
                return normalize(raw, where)
        if raw.get("output") is None:
            raw = {**raw, "output": ""}
    return normalize(raw, where)


def read_input(data: str, max_samples: int | None, data_dir: str | None = None
               ) -> tuple[Path, list[Any], list[dict]]:
    """The file, its raw records (what the output repeats) and their normalized form (what is prompted)."""
    from unitune.data import read_records, resolve

    path = resolve(data, data_dir=data_dir)
    pairs = read_records(path)[: max_samples or None]
    return path, [raw for _, raw in pairs], [prompt_record(raw, f"{path}: {where}") for where, raw in pairs]


# what an answer depends on besides its record, with the flag that sets it (in the order a change is named)
SETTING_FLAGS = {"model": "--model_name_or_path", "adapter": "--adapter", "template": "--template",
                 "template_digest": "--template", "decoding": "--decoding", "generate_kwargs": None,
                 "max_new_tokens": "--max_new_tokens",
                 "quantization_bit": "--quantization_bit", "compute_dtype": "--compute_dtype"}


def settings(model_args, gen_args, template) -> dict:
    """The `_settings` of every output line: another model, adapter, template or decoding answers differently.
    `template` is the one the run prompts with (resolved: `--model_type auto` names none), recorded by name and
    by digest, so an edited template file or chat template is a changed setting too."""
    return {"model": str(Path(model_args.base_path).resolve()),
            "adapter": str(Path(model_args.adapter).resolve()) if model_args.adapter else None,
            "template": template.name, "template_digest": template.digest(),
            "decoding": gen_args.decoding, "generate_kwargs": gen_args.generate_kwargs(),
            "max_new_tokens": gen_args.max_new_tokens, "quantization_bit": model_args.quantization_bit,
            "compute_dtype": model_args.compute_dtype}


def changed_setting(then: dict, now: dict) -> str:
    """'--adapter: none then, /x/lora now': the first setting that differs, named by its flag."""
    for key, flag_name in SETTING_FLAGS.items():
        old, new = then.get(key), now.get(key)
        if old == new:
            continue
        if key == "template_digest":
            return f"--template: {now.get('template')} renders prompts differently now (its file or the tokenizer's " \
                   f"chat template changed)"
        if key == "generate_kwargs":  # a decoding flag given one by one (--num_beams 4 ...)
            old, new = old if isinstance(old, dict) else {}, new or {}
            name = next(k for k in sorted({*old, *new}) if old.get(k) != new.get(k))
            flag_name, old, new = f"--{name}", old.get(name), new.get(name)
        return f"{flag_name}: {'none' if old is None else old} then, {'none' if new is None else new} now"
    return "settings changed"


def read_done(output: Path, raws: list[Any], data_path: Path, current: dict) -> dict[int, dict]:
    """Lines already written by an earlier run, by input index; refuses when they answer other records or were
    written with other settings (`current`, from settings())."""
    done: dict[int, dict] = {}
    if not output.is_file():
        return done
    text = output.read_text(encoding="utf-8")
    cut = bool(text) and not text.endswith("\n")  # a run killed in the middle of a write
    if cut:
        text = text[: text.rfind("\n") + 1]
    complete = text.split("\n")
    for lineno, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        where = f"{output}: line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UnituneError(f"{where}: not JSON; is --output a file generate.py wrote?") from None
        if not isinstance(record, dict) or "_index" not in record or "_hash" not in record:
            raise UnituneError(f"{where}: no _index/_hash fields, not written by generate.py; choose another --output")
        index = record["_index"]
        if not isinstance(index, int) or not 0 <= index < len(raws):
            raise UnituneError(f"{where}: answers record {index}, but {data_path} has {len(raws)} records "
                               f"(input changed, or a lower --max_samples?); remove {output} or choose another "
                               f"--output")
        if record["_hash"] != record_hash(raws[index]):
            raise UnituneError(f"{where}: answers a different record {index} than {data_path} now holds "
                               f"(input changed); remove {output} or choose another --output")
        if not isinstance(record.get("_settings"), dict):
            raise UnituneError(f"{where}: no _settings field (an older generate.py wrote it), so its answers may "
                               f"come from another model or decoding; remove {output} or choose another --output")
        if record["_settings"] != current:
            change = changed_setting(record["_settings"], current)
            raise UnituneError(f"{where}: answered with other settings ({change}); remove {output} or choose "
                               f"another --output")
        done[index] = record
    if cut:  # only now that the file is known to be ours: drop the cut line, its record is generated again
        log.warning("%s: dropping an incomplete last line (the previous run was interrupted)", output)
        output.write_text(text, encoding="utf-8")
    return done


def default_output(data: str, model_args) -> Path:
    """output/generate/<data name>-<adapter name, else base name>.jsonl: another adapter gets its own file."""
    model = Path(model_args.adapter or model_args.base_path).resolve().name
    return Path("output") / "generate" / f"{Path(data).stem}-{model}.jsonl"


# ---------------------------------------------------------------- runs
def setup_logging() -> None:
    from unitune.train import setup_logging as setup

    setup()


def batch_predict(model_args, gen_args, predict_args) -> dict:
    from tqdm.auto import tqdm

    from unitune.generation import generate_batch
    from unitune.loader import check_model_args, load, load_tokenizer_and_template

    check_model_args(model_args)  # before reading a large file
    gen_kwargs = gen_args.generate_kwargs()
    current = settings(model_args, gen_args, load_tokenizer_and_template(model_args, "infer")[1])
    data_path, raws, records = read_input(predict_args.data, predict_args.max_samples, predict_args.data_dir)
    output = Path(predict_args.output) if predict_args.output else default_output(predict_args.data, model_args)
    if output.resolve() == data_path.resolve():
        raise UnituneError(f"--output {output} is the input file; choose another --output")
    check_output_file(output, "--output")
    done = read_done(output, raws, data_path, current)
    todo = [i for i in range(len(raws)) if i not in done]
    stats = {"records": len(raws), "resumed": len(done), "generated": 0, "seconds": 0.0, "new_tokens": 0,
             "output": str(output)}
    if done:
        log.info("%s: %d of %d records already answered, %d to go", output, len(done), len(raws), len(todo))
    if todo:
        loaded = load(model_args, mode="infer")
        prompts = [loaded.template.prompt_for(records[i]["instruction"], records[i]["input"],
                                              records[i]["history"], records[i]["system"]) for i in todo]
        output.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc="generate", unit="rec", dynamic_ncols=True)
        started = time.perf_counter()
        with output.open("a", encoding="utf-8") as sink:
            def write(batch: list[int], texts: list[str], new_tokens: int) -> None:
                for local, text in zip(batch, texts):
                    index = todo[local]
                    line = {**raws[index], "generate": text, "_index": index, "_hash": record_hash(raws[index]),
                            "_settings": current}
                    sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                    done[index] = line
                sink.flush()  # a killed run keeps every finished batch
                os.fsync(sink.fileno())
                stats["new_tokens"] += new_tokens
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix({"tok/s": f"{stats['new_tokens'] / elapsed:.0f}"}, refresh=False)
                bar.update(len(batch))

            generate_batch(loaded.model, loaded.tokenizer, prompts, max_new_tokens=gen_args.max_new_tokens,
                           batch_size=predict_args.batch_size, stops=loaded.template.stop, on_batch=write,
                           **gen_kwargs)
        bar.close()
        stats["seconds"] = time.perf_counter() - started
        stats["generated"] = len(todo)
    # every record answered: rewrite in input order (atomically, so a crash here loses nothing)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in range(len(raws))),
                   encoding="utf-8")
    tmp.replace(output)
    rate = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    log.info("answered %d records (%d generated now, %d from an earlier run) -> %s; %.1f s, %.0f new tokens/s",
             len(raws), stats["generated"], stats["resumed"], output, stats["seconds"], rate)
    return stats


def interactive(model_args, gen_args, stdin=None, stdout=None) -> int:
    """One-shot REPL: every line read is a fresh instruction (no history); returns the answers given."""
    from unitune.generation import generate_batch
    from unitune.loader import load

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    gen_kwargs = gen_args.generate_kwargs()
    loaded = load(model_args, mode="infer")
    tty = stdin.isatty() and stdout.isatty()
    answered = 0
    while True:
        if tty:
            try:
                line = input("instruction> ")  # readline editing on a terminal
            except EOFError:
                break
        else:
            line = stdin.readline()
            if not line:
                break
        text = line.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            break
        prompt = loaded.template.prompt_for(text)
        answer = generate_batch(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=gen_args.max_new_tokens,
                                batch_size=1, stops=loaded.template.stop, **gen_kwargs)[0]
        stdout.write(answer + "\n")  # the answer is the program's output, not a log line
        stdout.flush()
        answered += 1
    return answered


def run(argv: list[str] | None = None) -> dict:
    model_args, gen_args, predict_args = parse(argv)
    from unitune.generation import check_decoding

    check_decoding(gen_args.generate_kwargs())  # an unknown preset or bad mix fails before anything loads
    setup_logging()
    if predict_args.interactive:
        return {"answered": interactive(model_args, gen_args)}
    return batch_predict(model_args, gen_args, predict_args)

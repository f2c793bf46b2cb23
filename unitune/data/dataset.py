"""Training data as Arrow, in two cached steps:

1. records: every file is read record by record into Arrow and each record checked and normalized (no torch,
   no tokenizer: a bad record is reported before either is even imported);
2. examples: the normalized records through THE encoding (input_ids, labels, length).

By default both run in this one process, and the Rust tokenizer's own threads give step 2 every core: it
tokenizes one batch without the GIL while this thread renders the next and writes the one before. Worker
processes (--preprocessing_num_workers N > 1, datasets' map) are forked from a parent that has imported torch;
each holds its own batches and tokenizer and touches that parent's pages, so N of them hold several times the
memory of one process for a little more speed (bench/data_speed.py runs both).

Cache keys are computed from what a result depends on, never from the records themselves: each data file's
path, size and modification time and --max_samples (records); those plus the tokenizer, the template,
--cutoff_len and --train_on_inputs (examples); CACHE_VERSION in both. An entry is a folder of memory-mapped
Arrow files written under a temporary name and renamed when complete, so a crash never leaves a half-written
entry, and a second identical run reads no record at all. Multi-process runs call these under
`main_process_first`: one process writes, the others find the entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from unitune.data.encoding import batch_ids, encode_batch, labelled, render_batch, tokenizer_fingerprint
from unitune.data.readers import check_file, iter_raw
from unitune.data.schema import normalize_raw
from unitune.errors import UnituneError

log = logging.getLogger(__name__)

CACHE_VERSION = "3"  # bump when reading, normalizing or tokenization changes meaning
META = "meta.json"
BATCH = 1000  # records per map batch: one tokenizer call each
FIELDS = ("system", "history", "instruction", "input", "output")


@dataclass
class Tokenized:
    examples: Any  # a datasets.Dataset with input_ids, labels and length per example (or a stream of them)
    records: int
    dropped: int
    from_cache: bool
    fingerprint: str
    log: list = field(default_factory=list)  # log records kept until the run's logging is set up


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "unitune" / "tokenized"


def _digest(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part}\n".encode())
    return digest.hexdigest()[:24]


def records_key(paths: list[Path], max_samples: int | None) -> str:
    stats = [(Path(p).resolve(), Path(p).stat()) for p in paths]
    return _digest(CACHE_VERSION, str(max_samples), *(f"{p}|{st.st_size}|{st.st_mtime_ns}" for p, st in stats))


def fingerprint(paths: list[Path], tokenizer, template, cutoff_len: int, train_on_inputs: bool,
                max_samples: int | None) -> str:
    return _digest(records_key(paths, max_samples), tokenizer_fingerprint(tokenizer), template.fingerprint(),
                   str(cutoff_len), str(train_on_inputs))


def _workers(num_proc: int | None, rows: int) -> int | None:
    """datasets' map num_proc: worker processes only where asked for, never more than there are batches."""
    wanted = max(1, min(num_proc or 1, rows // BATCH or 1))
    return wanted if wanted > 1 else None


def _unwrap(err: BaseException) -> BaseException:
    """Our error out of whatever a worker process's failure came wrapped in."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, UnituneError):
            return UnituneError(str(seen))
        seen = seen.__cause__ or seen.__context__
    return err


def load_entry(entry: Path):
    from datasets import Dataset, concatenate_datasets

    meta = json.loads((entry / META).read_text())
    parts = [Dataset.from_file(str(entry / name)) for name in meta["files"]]
    return (concatenate_datasets(parts) if len(parts) > 1 else parts[0]), meta


def _cached(entry: Path, build: Callable[[Path], dict], load: bool = True) -> tuple[Any, dict, bool]:
    """The entry's dataset (None unless `load`), meta and whether it was there; `build(tmp)` writes it into a
    temporary folder first when absent."""
    hit = (entry / META).is_file()
    if not hit:
        _build(entry, build)
    dataset, meta = load_entry(entry) if load else (None, json.loads((entry / META).read_text()))
    return dataset, meta, hit


def _build(entry: Path, build: Callable[[Path], dict]) -> None:
    made = [folder for folder in entry.parents if not folder.exists()]
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = build(tmp)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, entry)  # atomic: the entry appears complete or not at all
        except OSError:  # another process wrote the same entry first: it holds the same result
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(made[-1] if made else tmp, ignore_errors=True)  # bad data leaves nothing behind
        unwrapped = _unwrap(err)
        if unwrapped is err:
            raise
        raise unwrapped from None


def _files(dataset) -> list[str]:
    return [Path(f["filename"]).name for f in dataset.cache_files]


# ---------------------------------------------------------------- step 1: records
def _record_features():
    from datasets import Features, List, Value

    return Features({"system": Value("string"), "history": List(List(Value("string"))),
                     "instruction": Value("string"), "input": Value("string"), "output": Value("string")})


def _normalize_rows(batch: dict, files: list[str]) -> dict:
    """One map batch of raw rows -> normalized records; an error names file, line or index, and field."""
    records = [normalize_raw(raw, f"{files[f]}: {loc}") for f, loc, raw in zip(batch["file"], batch["loc"],
                                                                               batch["raw"])]
    return {name: [r[name] for r in records] for name in FIELDS}


def _write_arrow(target: Path, features, batches: Iterator[dict]) -> int:
    """Batches of columns into one Arrow file that datasets memory-maps; the rows written. pyarrow makes each
    column at once (datasets' own writer types the values one by one in Python, which a profile showed costing
    several times as much)."""
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    schema = features.arrow_schema
    with ArrowWriter(features=features, path=str(target)) as writer:
        for columns in batches:
            writer.write_table(pa.table([pa.array(columns[f.name], f.type) for f in schema], schema=schema))
        rows, _ = writer.finalize()
    return rows


def _file_rows(paths: list[Path], max_samples: int | None, counts: list[int]) -> Iterator[tuple[int, str, str]]:
    """(file index, location, JSON text) of every record of every file; appends each file's count to `counts`."""
    for index, path in enumerate(paths):
        count = 0
        for where, raw in iter_raw(path, max_samples):
            count += 1
            yield index, where, raw
        counts.append(count)


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(rows, size)):
        yield chunk


def _raw_batches(paths: list[Path], max_samples: int | None, counts: list[int]) -> Iterator[dict]:
    for chunk in _chunks(_file_rows(paths, max_samples, counts), 10_000):
        yield {name: list(column) for name, column in zip(("file", "loc", "raw"), zip(*chunk))}


def load_records(paths: list[Path], cache_dir: str | Path | None = None, num_proc: int | None = None,
                 max_samples: int | None = None, load: bool = True):
    """Step 1: the checked, normalized records of `paths` as an Arrow dataset (cached); (dataset, meta, hit).
    With `load` false only the check: the records are written where absent and not opened (a run whose
    tokens are cached never reads them)."""
    import datasets

    datasets.disable_progress_bars()  # a bad record must be the only line; we log what was done
    paths = [check_file(p) for p in paths]
    entry = Path(cache_dir or default_cache_dir()) / f"records-{records_key(paths, max_samples)}"

    def build(tmp: Path) -> dict:
        started, counts, names = time.perf_counter(), [], [str(p) for p in paths]
        if not num_proc or num_proc < 2:  # read, checked and normalized here, batch by batch
            normalized = (_normalize_rows(batch, names) for batch in _raw_batches(paths, max_samples, counts))
            _write_arrow(tmp / "records.arrow", _record_features(), normalized)
            files = ["records.arrow"]
        else:  # the raw rows first, so that datasets can split them among the worker processes
            from datasets import Features, Value

            raw_features = Features({"file": Value("int32"), "loc": Value("string"), "raw": Value("large_string")})
            _write_arrow(tmp / "raw.arrow", raw_features, _raw_batches(paths, max_samples, counts))
            raw = datasets.Dataset.from_file(str(tmp / "raw.arrow"))
            records = raw.map(_normalize_rows, batched=True, batch_size=BATCH,
                              num_proc=_workers(num_proc, len(raw)), fn_kwargs={"files": names},
                              remove_columns=raw.column_names, features=_record_features(),
                              new_fingerprint=entry.name[-24:], cache_file_name=str(tmp / "records.arrow"),
                              load_from_cache_file=False)
            files = _files(records)
            del raw, records
            (tmp / "raw.arrow").unlink()
        return {"records": sum(counts), "counts": counts, "sources": names, "files": files,
                "seconds": time.perf_counter() - started}

    records, meta, hit = _cached(entry, build, load)
    if hit:
        log.info("records: %d checked records found in %s, reading skipped", meta["records"], entry)
    else:
        for path, count in zip(paths, meta["counts"]):
            log.info("read %d records from %s", count, path)
    return records, meta, hit


# ---------------------------------------------------------------- step 2: examples
def _example_features():
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")), "length": Value("int32")})


def _columns(examples: list[dict | None]) -> dict:
    kept = [e for e in examples if e]
    return {"input_ids": [e["input_ids"] for e in kept], "labels": [e["labels"] for e in kept],
            "length": [len(e["input_ids"]) for e in kept]}


def _examples(records: list[dict], tokenizer, template, cutoff_len: int, train_on_inputs: bool) -> dict:
    return _columns(encode_batch(tokenizer, template, records, cutoff_len, train_on_inputs))


def _rows(batch: dict) -> list[dict]:
    return [dict(zip(FIELDS, values)) for values in zip(*(batch[name] for name in FIELDS))]


def _encode_rows(batch: dict, **settings) -> dict:
    """One map batch of normalized records -> their examples (fewer where truncation left no response)."""
    return _examples(_rows(batch), **settings)


def _encoded_batches(records, tokenizer, template, cutoff_len: int, train_on_inputs: bool) -> Iterator[dict]:
    """Step 2 in this process, the examples batch by batch in the order of the records: while the tokenizer's
    threads tokenize batch k (without the GIL), this thread reads and renders batch k+1, and labels batch k-1
    and writes it (the caller, between two items)."""
    from concurrent.futures import ThreadPoolExecutor

    def finished(rendered, ids) -> dict:
        return _columns(labelled(tokenizer, template, rendered, ids.result(), cutoff_len, train_on_inputs))

    with ThreadPoolExecutor(1) as tokenizing:
        pending = None
        for batch in records.iter(batch_size=BATCH):
            rendered = render_batch(template, _rows(batch))
            ids = tokenizing.submit(batch_ids, tokenizer, rendered)
            if pending:
                yield finished(*pending)
            pending = rendered, ids
        if pending:
            yield finished(*pending)


def prepare(paths: list[Path], tokenizer, template, cutoff_len: int, train_on_inputs: bool,
            cache_dir: str | Path | None = None, num_proc: int | None = None,
            max_samples: int | None = None) -> Tokenized:
    """The encoded examples of `paths`: from the cache when an identical run wrote them, else from step 1's
    records (themselves cached) through the one encoding."""
    import datasets

    datasets.disable_progress_bars()
    paths = [check_file(p) for p in paths]
    key = fingerprint(paths, tokenizer, template, cutoff_len, train_on_inputs, max_samples)
    entry = Path(cache_dir or default_cache_dir()) / key
    if (entry / META).is_file():
        examples, meta = load_entry(entry)
        log.info("tokenized data: cache hit %s (%d examples), reading and tokenization skipped", entry,
                 len(examples))
        return Tokenized(examples, meta["records"], meta["dropped"], True, key)
    records, _, _ = load_records(paths, cache_dir, num_proc, max_samples)
    workers = _workers(num_proc, len(records))

    def build(tmp: Path) -> dict:
        started = time.perf_counter()
        settings = {"tokenizer": tokenizer, "template": template, "cutoff_len": cutoff_len,
                    "train_on_inputs": train_on_inputs}
        if workers:
            examples = records.map(_encode_rows, batched=True, batch_size=BATCH, num_proc=workers,
                                   fn_kwargs=settings, remove_columns=records.column_names,
                                   features=_example_features(), new_fingerprint=key,
                                   cache_file_name=str(tmp / "examples.arrow"), load_from_cache_file=False)
            count, files = len(examples), _files(examples)
        else:
            count = _write_arrow(tmp / "examples.arrow", _example_features(), _encoded_batches(records, **settings))
            files = ["examples.arrow"]
        if not count:
            raise UnituneError(f"no trainable example left after truncation to --cutoff_len {cutoff_len}")
        return {"records": len(records), "dropped": len(records) - count, "examples": count, "files": files,
                "seconds": time.perf_counter() - started}

    examples, meta, _ = _cached(entry, build)
    if meta["dropped"]:
        log.warning("dropped %d of %d examples: --cutoff_len %d left them no response token",
                    meta["dropped"], meta["records"], cutoff_len)
    log.info("tokenized data: %d examples, cached as %s (%d records in %.1f s, %.0f records/s, %s)",
             meta["examples"], entry, meta["records"], meta["seconds"], meta["records"] / max(meta["seconds"], 1e-9),
             f"{workers} processes" if workers else "one process, the tokenizer's threads")
    return Tokenized(examples, meta["records"], meta["dropped"], False, key)


def split(examples, val_set_size: float, seed: int):
    """Shuffle-split off a validation set: a count when >= 1, a fraction when < 1 (a list or an Arrow dataset)."""
    if not val_set_size:
        return examples, []
    import random

    count = int(val_set_size) if val_set_size >= 1 else round(len(examples) * val_set_size)
    if not 0 < count < len(examples):
        raise UnituneError(f"--val_set_size {val_set_size} leaves no training or no validation examples "
                           f"out of {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if isinstance(examples, list):
        return [examples[i] for i in order[count:]], [examples[i] for i in order[:count]]
    return examples.select(order[count:]), examples.select(order[:count])


# ---------------------------------------------------------------- streaming
def _raw_rows(paths: list[str], max_samples: int | None) -> Iterator[dict]:
    for path in paths:
        for where, raw in iter_raw(path, max_samples):
            yield {"where": f"{path}: {where}", "raw": raw}


def _encode_streamed(batch: dict, **settings) -> dict:
    records = [normalize_raw(raw, where) for where, raw in zip(batch["where"], batch["raw"])]
    return _examples(records, **settings)


def stream(paths: list[Path], tokenizer, template, cutoff_len: int, train_on_inputs: bool, buffer_size: int,
           seed: int, max_samples: int | None = None):
    """An IterableDataset that reads, normalizes and encodes while the Trainer iterates, shuffled through a
    buffer of `buffer_size` examples. Its order is fixed by `seed` (and the epoch), so a resumed run that skips
    the batches it already trained on continues at the same position."""
    import datasets

    datasets.disable_progress_bars()
    paths = [check_file(p) for p in paths]
    if buffer_size < 1:
        raise UnituneError(f"--buffer_size {buffer_size}: must be at least 1")
    raw = datasets.IterableDataset.from_generator(
        _raw_rows, gen_kwargs={"paths": [str(p) for p in paths], "max_samples": max_samples},
        features=datasets.Features({"where": datasets.Value("string"), "raw": datasets.Value("large_string")}))
    encoded = raw.map(_encode_streamed, batched=True, batch_size=64, remove_columns=["where", "raw"],
                      features=_example_features(), fn_kwargs={"tokenizer": tokenizer, "template": template,
                                                       "cutoff_len": cutoff_len, "train_on_inputs": train_on_inputs})
    shuffled = encoded.shuffle(seed=seed, buffer_size=buffer_size)
    try:
        next(iter(encoded))  # the first records are checked now, before any model loads
    except StopIteration:
        raise UnituneError(f"no trainable example in {', '.join(map(str, paths))} after truncation to "
                           f"--cutoff_len {cutoff_len}") from None
    log.info("streaming %s: reading and tokenizing while training, shuffle buffer %d", ", ".join(map(str, paths)),
             buffer_size)
    return shuffled

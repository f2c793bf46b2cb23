"""Read, check and normalize instruction data; tokenize it with a template, cached by fingerprint.

Every record becomes {"system", "history": [[query, response], ...], "instruction", "input", "output"}:
single-turn Alpaca records have an empty history, ShareGPT conversations put earlier turns there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from unitune.dataset_registry import eval_files, registry, resolve, resolve_all  # noqa: F401 (re-exported)
from unitune.errors import UnituneError

log = logging.getLogger(__name__)

CACHE_VERSION = "2"  # bump when tokenization changes meaning

_ROLE = {"human": "user", "user": "user", "observation": "user", "tool": "user",
         "gpt": "assistant", "assistant": "assistant", "function_call": "assistant", "bot": "assistant",
         "system": "system"}


# ---------------------------------------------------------------- reading
def _read_json(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnituneError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
        for index, record in enumerate(records):
            yield f"record {index}", record
        return
    if stripped.startswith("{") and "\n" not in stripped.strip():
        try:
            yield "record 0", json.loads(text)
            return
        except json.JSONDecodeError:
            pass
    yield from _read_jsonl(path, text)  # many ".json" datasets (Belle's) are JSON Lines


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {lineno}", json.loads(line)
        except json.JSONDecodeError as err:
            raise UnituneError(f"{path}: line {lineno}: invalid JSON ({err.msg})") from None


def _read_csv(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    # a file-like source, not splitlines(): quoted fields may span lines and must keep their newlines
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2
    for row in reader:
        yield f"line {start}", {k: v for k, v in row.items() if k}
        start = reader.line_num + 1


def _read_parquet(path: Path, _text: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for index, record in enumerate(pq.read_table(path).to_pylist()):
        yield f"record {index}", record


READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(location, raw record) pairs of one file; the location names the line or index for errors."""
    path = Path(path)
    if path.is_dir():
        raise UnituneError(f"{path}: is a directory; give a data file ({', '.join(READERS)}) or a dataset name")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UnituneError(f"{path}: unsupported data format {path.suffix!r}; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise UnituneError(f"{path}: data file not found")
    text = "" if reader is _read_parquet else read_text(path)
    if reader is not _read_parquet and not text.strip():
        raise UnituneError(f"{path}: empty file, no records")
    records = list(reader(path, text))
    if not records:
        raise UnituneError(f"{path}: no records")
    return records


def read_text(path: Path) -> str:
    """A text file as UTF-8; the byte-order mark some editors write (Notepad, Excel's CSV) is not data."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UnituneError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                           f"save it as UTF-8 (e.g. iconv -f GBK -t UTF-8)") from None


# ---------------------------------------------------------------- normalizing
def _text(record: dict, key: str, where: str, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise UnituneError(f"{where}: missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise UnituneError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _from_conversations(record: dict, key: str, where: str) -> dict:
    messages = record[key]
    if not isinstance(messages, list) or not messages:
        raise UnituneError(f"{where}: field {key!r} must be a non-empty list of messages")
    system = _text(record, "system", where, required=False) or None
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise UnituneError(f"{where}: {key}[{i}] must be an object")
        role = _ROLE.get(str(msg.get("from", msg.get("role", ""))).lower())
        content = msg.get("value", msg.get("content"))
        if role is None:
            raise UnituneError(f"{where}: {key}[{i}] has unknown role {msg.get('from', msg.get('role'))!r}")
        if not isinstance(content, str):
            raise UnituneError(f"{where}: {key}[{i}] field 'value' must be a string")
        if role == "system" and i == 0:
            system = content
        elif turns and turns[-1][0] == role:  # consecutive same-role messages (e.g. call + result) join
            turns[-1] = (role, turns[-1][1] + "\n" + content)
        else:
            turns.append((role, content))
    if len(turns) < 2 or turns[0][0] != "user" or turns[-1][0] != "assistant":
        raise UnituneError(f"{where}: field {key!r} must alternate user/assistant, starting with user "
                           f"and ending with assistant")
    if record.get("tools") and record["tools"] not in ("[]", "{}"):  # glaive writes "[]" for "no tools"
        tools = record["tools"] if isinstance(record["tools"], str) else json.dumps(record["tools"])
        system = (system + "\n" if system else "") + f"Tools: {tools}"
    pairs = [[turns[i][1], turns[i + 1][1]] for i in range(0, len(turns), 2)]
    return {"system": system, "history": pairs[:-1], "instruction": pairs[-1][0], "input": "",
            "output": pairs[-1][1]}


def normalize(record: Any, where: str) -> dict:
    """One raw record -> the normalized dict, or a UnituneError naming file, record and field."""
    if not isinstance(record, dict):
        raise UnituneError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("conversations", "messages"):
        if key in record:
            return _from_conversations(record, key, where)
    history = record.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history):
        raise UnituneError(f"{where}: field 'history' must be a list of [query, response] pairs")
    for i, pair in enumerate(history):  # as strict as the other fields: a number is not text
        for j, value in enumerate(pair):
            if not isinstance(value, str):
                raise UnituneError(f"{where}: field 'history' [{i}][{j}] must be a string, got {type(value).__name__}")
    system = _text(record, "system", where, required=False) or None
    return {"system": system, "history": [list(h) for h in history],
            "instruction": _text(record, "instruction", where, required=True),
            "input": _text(record, "input", where, required=False),
            "output": _text(record, "output", where, required=True)}


def load_file(path: str | Path, max_samples: int | None = None) -> list[dict]:
    records = read_records(path)[: max_samples or None]
    return [normalize(raw, f"{path}: {where}") for where, raw in records]


# ---------------------------------------------------------------- registry
def load_datasets(names: list[str], max_samples: int | None = None, data_dir: str | None = None) -> list[dict]:
    records: list[dict] = []
    for name in names:
        for path in resolve_all(name, data_dir=data_dir):
            loaded = load_file(path, max_samples)
            log.info("read %d records from %s", len(loaded), path if str(path) != name else name)
            records.extend(loaded)
    return records


# ---------------------------------------------------------------- tokenizing
@dataclass
class Tokenized:
    examples: list[dict]  # {"input_ids": [...], "labels": [...]}
    dropped: int
    from_cache: bool
    fingerprint: str


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}|{tokenizer.bos_token_id}".encode()).hexdigest()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode(tokenizer, template, record: dict, cutoff_len: int, train_on_inputs: bool) -> dict | None:
    """Token ids and labels of one record; None when truncation leaves no response token.

    THE encoding, shared with inference: the conversation is rendered to one text and tokenized at once, with
    the tokenizer's own special tokens (bos, ChatGLM's [gMASK] sop), exactly as the front-ends tokenize a prompt
    (`template.prompt_for`), so the ids of every turn up to a response are what inference feeds the model.
    Masks come from rendering prefixes: a response's tokens are those between the tokenized prefix ending with
    its prompt and the one ending with it. The end of a turn is the template's own suffix (never followed by an
    eos of ours, so `<|im_end|>` is not doubled); a template without one gets eos after the last response only,
    which teaches the model to stop while the history keeps the template's own text, as each family's prompt
    code builds it.
    """
    segments = template.segments(record["instruction"], record["input"], record["output"],
                                 record["history"], record["system"])
    text, bounds = "", []
    for prompt, response in segments:
        text += prompt
        prompt_end = text
        text += response
        bounds.append((prompt_end, text))
    ids = tokenizer.encode(text, add_special_tokens=True)
    labels = list(ids) if train_on_inputs else [-100] * len(ids)
    for turn, (prompt_end, response_end) in enumerate(bounds):
        start = _common_prefix(tokenizer.encode(prompt_end, add_special_tokens=True), ids)
        stop = len(ids) if turn == len(bounds) - 1 else _common_prefix(
            tokenizer.encode(response_end, add_special_tokens=True), ids)
        labels[start:stop] = ids[start:stop]
    if not template.ends_turns_itself() and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    if all(label == -100 for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize(records: list[dict], tokenizer, template, cutoff_len: int, train_on_inputs: bool,
             cache_dir: str | Path | None = None) -> Tokenized:
    """Tokenize `records`, reusing the cached result of an identical earlier run."""
    import numpy as np

    digest = hashlib.sha256()
    for part in (CACHE_VERSION, _tokenizer_fingerprint(tokenizer), template.fingerprint(), str(cutoff_len),
                 str(train_on_inputs)):
        digest.update(part.encode())
    digest.update(json.dumps(records, ensure_ascii=False, sort_keys=True).encode())
    fingerprint = digest.hexdigest()[:24]
    cache = Path(cache_dir or Path.home() / ".cache" / "unitune" / "tokenized") / f"{fingerprint}.npz"
    if cache.is_file():
        blob = np.load(cache)
        offsets, ids, labels = blob["offsets"], blob["input_ids"], blob["labels"]
        examples = [{"input_ids": ids[a:b].tolist(), "labels": labels[a:b].tolist()}
                    for a, b in zip(offsets[:-1], offsets[1:])]
        log.info("tokenized data: cache hit %s (%d examples), tokenization skipped", cache, len(examples))
        return Tokenized(examples, int(blob["dropped"]), True, fingerprint)
    examples, dropped = [], 0
    for record in records:
        encoded = encode(tokenizer, template, record, cutoff_len, train_on_inputs)
        if encoded is None:
            dropped += 1
        else:
            examples.append(encoded)
    if dropped:
        log.warning("dropped %d of %d examples: --cutoff_len %d left them no response token",
                    dropped, len(records), cutoff_len)
    if not examples:
        raise UnituneError(f"no trainable example left after truncation to --cutoff_len {cutoff_len}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    lengths = [len(e["input_ids"]) for e in examples]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, offsets=offsets, dropped=np.array(dropped),
             input_ids=np.array([t for e in examples for t in e["input_ids"]], dtype=np.int64),
             labels=np.array([t for e in examples for t in e["labels"]], dtype=np.int64))
    tmp.replace(cache)  # atomic: a crashed run never leaves a half-written cache
    log.info("tokenized data: %d examples, cached as %s", len(examples), cache)
    return Tokenized(examples, dropped, False, fingerprint)


def split(examples: list, val_set_size: float, seed: int) -> tuple[list, list]:
    """Shuffle-split off a validation set: a count when >= 1, a fraction when < 1."""
    if not val_set_size:
        return examples, []
    import random

    count = int(val_set_size) if val_set_size >= 1 else int(round(len(examples) * val_set_size))
    if not 0 < count < len(examples):
        raise UnituneError(f"--val_set_size {val_set_size} leaves no training or no validation examples "
                           f"out of {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val = [examples[i] for i in order[:count]]
    train = [examples[i] for i in order[count:]]
    return train, val


class Collator:
    """Pads a batch to its longest example (right side for training), labels padded with -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        out = pad_right(batch, {"input_ids": self.pad_token_id, "labels": -100})
        out["attention_mask"] = (out.pop("_lengths")[:, None] > _columns(out["input_ids"])).long()
        return out


def _columns(ids):
    import torch

    return torch.arange(ids.shape[1])[None, :]


def pad_right(batch: list[dict], fills: dict[str, int]) -> dict:
    """The `fills` fields of every row as one right-padded long tensor each, plus `_lengths` of the rows."""
    import torch

    lengths = [len(b["input_ids"]) for b in batch]
    width = max(lengths)
    out = {key: torch.full((len(batch), width), fill, dtype=torch.long) for key, fill in fills.items()}
    for row, (b, n) in enumerate(zip(batch, lengths)):
        for key in fills:
            out[key][row, :n] = torch.tensor(b[key])
    out["_lengths"] = torch.tensor(lengths)
    return out

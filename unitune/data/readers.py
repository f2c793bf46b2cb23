"""Read data files record by record: (location, raw JSON text) pairs, never the whole file at once where the
format allows it (JSON Lines, CSV and Parquet stream; a JSON array is one document and is parsed whole).

A record travels as its JSON text so that records of different shapes (Alpaca fields, ShareGPT
conversations, missing or mistyped fields) share one Arrow string column; it is parsed and checked where it
is normalized, in the worker processes. The location ("line 5", "record 3") names it in error messages.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unitune.errors import UnituneError

BOM = "\ufeff"


def _not_utf8(path: Path, offset: int, byte: bytes) -> UnituneError:
    return UnituneError(f"{path}: not UTF-8 text (byte {offset} is {byte!r}); save it as UTF-8 "
                        f"(e.g. iconv -f GBK -t UTF-8)")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, decoded as UTF-8 without reading the file whole."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, offset + err.start, raw[err.start:err.start + 1]) from None
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix(BOM)  # the byte-order mark some editors write is not data
            if line.strip():
                yield lineno, line


def _read_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    for lineno, line in _lines(path):
        yield f"line {lineno}", line


def _read_json(path: Path) -> Iterator[tuple[str, str]]:
    with path.open("rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="ignore").removeprefix(BOM).lstrip()
    if head.startswith("["):
        text = read_text(path)
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnituneError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
        for index, record in enumerate(records):
            yield f"record {index}", json.dumps(record, ensure_ascii=False)
        return
    # many ".json" datasets (Belle's) are JSON Lines; a file of one object on one line is "record 0"
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        return
    second = next(lines, None)
    if second is None:
        yield "record 0", first[1]
        return
    yield f"line {first[0]}", first[1]
    yield f"line {second[0]}", second[1]
    for lineno, line in lines:
        yield f"line {lineno}", line


def _read_csv(path: Path) -> Iterator[tuple[str, str]]:
    # a file-like source read with newline="": quoted fields may span lines and must keep their newlines
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        start = 2
        try:
            for row in reader:
                yield f"line {start}", json.dumps({k: v for k, v in row.items() if k}, ensure_ascii=False)
                start = reader.line_num + 1
        except UnicodeDecodeError as err:
            raise _not_utf8(path, err.start, err.object[err.start:err.start + 1]) from None


def _read_parquet(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for record in batch.to_pylist():
            yield f"record {index}", json.dumps(record, ensure_ascii=False, default=str)
            index += 1


READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def check_file(path: str | Path) -> Path:
    """The file, or the one-line error a user reads: a directory, an unknown format, a missing file."""
    path = Path(path)
    if path.is_dir():
        raise UnituneError(f"{path}: is a directory; give a data file ({', '.join(READERS)}) or a dataset name")
    if path.suffix.lower() not in READERS:
        raise UnituneError(f"{path}: unsupported data format {path.suffix!r}; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise UnituneError(f"{path}: data file not found")
    return path


def iter_raw(path: str | Path, max_samples: int | None = None) -> Iterator[tuple[str, str]]:
    """(location, record as JSON text) of one file, at most `max_samples`; an empty file is an error."""
    path = check_file(path)
    count = 0
    for where, raw in READERS[path.suffix.lower()](path):
        if max_samples and count >= max_samples:
            return
        count += 1
        yield where, raw
    if not count:
        empty = path.suffix.lower() != ".parquet" and not read_text(path).strip()
        raise UnituneError(f"{path}: empty file, no records" if empty else f"{path}: no records")


def parse(raw: str, where: str) -> Any:
    """A record's JSON text -> the record; only JSON Lines can be malformed here (the others are parsed text)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise UnituneError(f"{where}: invalid JSON ({err.msg})") from None


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(location, raw record) pairs of one small file, in memory (held-out sets, batch prediction)."""
    return [(where, parse(raw, f"{path}: {where}")) for where, raw in iter_raw(path)]


def read_text(path: Path) -> str:
    """A text file as UTF-8; the byte-order mark some editors write (Notepad, Excel's CSV) is not data."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err.start, err.object[err.start:err.start + 1]) from None

"""Predictions files (JSON Lines, one question a line) and atomic writes of everything a run reports.

A predictions line holds `prediction` (the raw text a model gave), `answer` (the reference), `subject`, and
what a benchmark needs besides (MMCU `domain`, Belle-eval `class` and `question`). A generating run writes
the same lines with an `id` and a `_key` naming the settings that produced them (see `unitune.evaluation.
predict`), so `--predictions` scores a file from any source and a run's own file is resumable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unitune.errors import UnituneError


def read_predictions(path: str | Path, fields: Iterable[str]) -> list[dict]:
    """Every record of a predictions file, checked: one line error naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise UnituneError(f"--predictions {path}: no such file")
    fields = tuple(fields)
    records: list[dict] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UnituneError(f"{path}: line {lineno}: not JSON (expected JSON Lines, one question a "
                                   f"line)") from None
            if not isinstance(record, dict):
                raise UnituneError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
            for name in fields:
                if name not in record:
                    raise UnituneError(f"{path}: line {lineno}: field '{name}' is missing")
                if record[name] is not None and not isinstance(record[name], str):
                    raise UnituneError(f"{path}: line {lineno}: field '{name}' must be a string, got "
                                       f"{type(record[name]).__name__}")
            record.setdefault("_line", lineno)
            records.append(record)
    if not records:
        raise UnituneError(f"--predictions {path}: no records")
    return records


def where(record: dict, path: str | Path | None = None) -> str:
    """'file: line N' (or the record id) for error messages."""
    line = record.get("_line")
    place = f"line {line}" if line else f"record {record.get('id', '?')}"
    return f"{path}: {place}" if path else place



def mean(values: list[float]) -> float | None:
    """Arithmetic mean; None (reported as n/a, never NaN) when there is nothing to average."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    result = sum(values) / len(values)
    if math.isnan(result):  # cannot happen with finite inputs; a guard so no NaN is ever reported
        raise ValueError("mean of non-finite values")
    return result


def group_accuracy(items: list[tuple[str, bool, bool]]) -> dict[str, dict[str, Any]]:
    """(group, correct, unparsed) triples -> {group: {accuracy, correct, n, unparsed}} in first-seen order."""
    out: dict[str, dict[str, Any]] = {}
    for group, correct, unparsed in items:
        entry = out.setdefault(group, {"accuracy": None, "correct": 0, "n": 0, "unparsed": 0})
        entry["n"] += 1
        entry["correct"] += int(bool(correct))
        entry["unparsed"] += int(bool(unparsed))
    for entry in out.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    return out


def json_dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False) + "\n"

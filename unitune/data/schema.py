"""Check and normalize one record; the in-memory loaders of small files (held-out sets, batch prediction).

Every record becomes {"system", "history": [[query, response], ...], "instruction", "input", "output"}:
single-turn Alpaca records have an empty history, ShareGPT conversations put earlier turns there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unitune.data.readers import parse
from unitune.dataset_registry import resolve_all
from unitune.errors import UnituneError

log = logging.getLogger(__name__)

_ROLE = {"human": "user", "user": "user", "observation": "user", "tool": "user",
         "gpt": "assistant", "assistant": "assistant", "function_call": "assistant", "bot": "assistant",
         "system": "system"}


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


def normalize_raw(raw: str, where: str) -> dict:
    """A record's JSON text (as the readers give it) -> the normalized dict."""
    return normalize(parse(raw, where), where)


def load_file(path: str | Path, max_samples: int | None = None) -> list[dict]:
    """The normalized records of one small file, in memory."""
    from unitune.data.readers import iter_raw

    return [normalize_raw(raw, f"{path}: {where}") for where, raw in iter_raw(path, max_samples)]


def load_datasets(names: list[str], max_samples: int | None = None, data_dir: str | None = None) -> list[dict]:
    """The normalized records of registered names and paths, in memory (training reads through dataset.py)."""
    records: list[dict] = []
    for name in names:
        for path in resolve_all(name, data_dir=data_dir):
            loaded = load_file(path, max_samples)
            log.info("read %d records from %s", len(loaded), path if str(path) != name else name)
            records.extend(loaded)
    return records

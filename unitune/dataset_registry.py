"""The dataset registry (data/dataset_info.json): names -> files shipped, files on a hub, or files at a URL.

An entry is one of
- shipped:  {"file": "synth/train.jsonl", "eval": "synth/test.jsonl"}, relative to the data/ asset folder;
- hub:      {"hub": "QingyiSi/Alpaca-CoT", "file": "alpaca/alpaca_data_cleaned.json"}, a file of a Hugging
            Face dataset repository;
- url:      {"url": "https://.../x.json", "file": "x.json"};
- combined: {"combine": ["alpaca", "belle"]}, the records of several entries in turn (Alpaca-CoT's
            `alpaca-belle` & co. were files users built by concatenating the parts).
Files that are not shipped are looked for in the data directory (--data_dir, else $UNITUNE_DATA_DIR, else
~/.cache/unitune/data) under `file`, or under its last component (Alpaca-CoT's flat ./data/ layout), and
are fetched there when absent and a hub or the URL is reachable. Offline, the error says which file, where it
comes from and where to put it. `"unverified": true` marks a file name taken from Alpaca-CoT's code or
README that was not checked against the hub; its error says so.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from unitune.errors import UnituneError
from unitune.paths import asset, data_dir as default_data_dir

log = logging.getLogger(__name__)
REGISTRY = "dataset_info.json"
SOURCES = ("file", "hub", "url", "combine")


def registry() -> dict:
    path = asset("data", REGISTRY)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnituneError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None


def _data_root(data_dir: str | Path | None) -> Path:
    return Path(data_dir) if data_dir else default_data_dir()


def _where_from(name: str, entry: dict) -> str:
    if "hub" in entry:
        where = f"the Hugging Face dataset {entry['hub']}, file {entry['file']}"
    else:
        where = entry["url"]
    if entry.get("unverified"):
        where += " (a file name from Alpaca-CoT's code, not checked against the hub: look in that folder)"
    return where


def _fetch(name: str, entry: dict, target: Path) -> None:
    """Download a hub or URL file to `target`, atomically; UnituneError when it cannot be had, and then
    nothing is left behind (folders this call made are removed)."""
    import shutil

    made = [p for p in target.parents if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if "hub" in entry:
            from huggingface_hub import constants, hf_hub_download

            _check_reachable(constants.ENDPOINT, offline=constants.HF_HUB_OFFLINE)

            got = Path(hf_hub_download(entry["hub"], entry["file"], repo_type="dataset",
                                       local_dir=_hub_dir(target, entry)))
            if got.resolve() != target.resolve():
                os.replace(got, target)
        else:
            import urllib.request

            _check_reachable(entry["url"])
            tmp = target.with_name(target.name + ".part")
            with urllib.request.urlopen(entry["url"], timeout=30) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)
    except Exception as err:  # offline, unknown file, refused: all end the same way for the user
        for folder in made[-1:]:  # the outermost folder this call made holds all the others
            shutil.rmtree(folder, ignore_errors=True)
        Path(str(target) + ".part").unlink(missing_ok=True)
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UnituneError(f"dataset {name!r}: file {target} is not there and could not be fetched from "
                           f"{_where_from(name, entry)} ({reason}); download it and put it at {target}, or point "
                           f"--data_dir / UNITUNE_DATA_DIR at the folder that holds it") from None
    log.info("dataset %s: fetched %s", name, target)


def _check_reachable(url: str, offline: bool = False) -> None:
    """Fail in a second, not after the hub client's minute of retries, when the host cannot be reached."""
    import socket
    from urllib.parse import urlparse

    if offline:
        raise ConnectionError("HF_HUB_OFFLINE is set")
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"offline: cannot reach {parsed.hostname}: {err.strerror or err}") from None


def _hub_dir(target: Path, entry: dict) -> Path:
    """hf_hub_download(local_dir=...) keeps the repository's sub-folders: the root that puts it at target."""
    root = target
    for _ in Path(entry["file"]).parts:
        root = root.parent
    return root


def _file_of(name: str, entry: dict, key: str, data_dir: str | Path | None) -> Path:
    if not any(k in entry for k in ("hub", "url")):  # shipped with unitune
        return asset("data", entry[key])
    if key != "file":
        raise UnituneError(f"dataset {name!r}: {REGISTRY} gives {key!r} only for shipped files")
    root = _data_root(data_dir)
    target = root / entry["file"]
    for candidate in (target, root / Path(entry["file"]).name):
        if candidate.is_file():
            return candidate
    _fetch(name, entry, target)
    return target


def resolve_all(name_or_path: str, key: str = "file", data_dir: str | Path | None = None,
                _seen: tuple[str, ...] = ()) -> list[Path]:
    """A registered name or a path -> the files to read, in order."""
    from unitune.data import READERS

    path = Path(name_or_path)
    if path.suffix.lower() in READERS or path.exists():
        return [path]
    entries = registry()
    if name_or_path not in entries:
        raise UnituneError(f"unknown dataset {name_or_path!r}: not a file, and not in {REGISTRY}; "
                           f"known: {', '.join(sorted(entries))}")
    entry = entries[name_or_path]
    if "combine" in entry:
        if name_or_path in _seen:
            raise UnituneError(f"{REGISTRY}: dataset {name_or_path!r} combines itself")
        return [p for part in entry["combine"]
                for p in resolve_all(part, key, data_dir, (*_seen, name_or_path))]
    return [_file_of(name_or_path, entry, key, data_dir)]


def resolve(name_or_path: str, key: str = "file", data_dir: str | Path | None = None) -> Path:
    """One file: a path, or a registered name that is not a combination."""
    files = resolve_all(name_or_path, key, data_dir)
    if len(files) != 1:
        raise UnituneError(f"dataset {name_or_path!r} combines {len(files)} files; name one of its parts")
    return files[0]


def eval_files(names: list[str]) -> list[Path]:
    """The held-out files that registered (shipped) datasets name, for the default accuracy report."""
    entries = registry()
    return [asset("data", entries[n]["eval"]) for n in names if n in entries and entries[n].get("eval")]

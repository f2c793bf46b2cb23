"""Where a run will write, checked before anything loads: a file in the way or a place nobody may write to
must be one line naming the flag, not an OSError after the model has loaded and the data was tokenized; and
results written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from unitune.errors import UnituneError


def check_output_dir(path: str | Path, flag: str) -> None:
    """`path` is a directory, or one that can be made, and this process may write in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnituneError(f"{flag} {path}: is a file, not a directory")
    existing = path
    while not existing.exists():  # the nearest ancestor that exists is where directories get made
        existing = existing.parent
    if not existing.is_dir():
        raise UnituneError(f"{flag} {path}: {existing} is a file, so no directory can be made under it")
    # os.access is not enough (root passes it on read-only mounts and /proc): make and remove a probe
    probe = existing / f".unitune-write-test-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise UnituneError(f"{flag} {path}: cannot write in {existing} ({err.strerror})") from None


def check_output_file(path: str | Path, flag: str) -> None:
    """`path` is a file (or can be one) in a directory this process may write in."""
    path = Path(path)
    if path.is_dir():
        raise UnituneError(f"{flag} {path}: is a directory, not a file")
    check_output_dir(path.parent, flag)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so a reader sees either the old one or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""`unitune env`: what a bug report needs — versions, devices, and whether the install matches the lock."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from unitune.paths import asset_root

# the libraries whose versions decide most behaviour, in the order a reader wants them
REPORTED = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "safetensors",
            "huggingface_hub", "gradio", "fastapi"]
LOCK_FILE = "requirements.lock"


def require_extra(extra: str, modules: tuple[str, ...], purpose: str) -> None:
    """A one-line error naming the extra to install when an optional part is used without it."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        from unitune.errors import UnituneError

        raise UnituneError(f"{purpose} needs {', '.join(missing)}: pip install 'unitune[{extra}]'")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> exact version of every `name==version` line of a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name.split("[")[0])] = version.strip()
    return pins


def _base_version(version: str) -> str:
    return version.split("+", 1)[0]  # torch 2.13.0+cpu is the lock's torch==2.13.0


def lock_differences(lock: dict[str, str]) -> tuple[list[str], list[str]]:
    """(installed at another version than locked, locked but not installed)."""
    moved, missing = [], []
    for name, want in sorted(lock.items()):
        have = _version(name)
        if have is None:
            missing.append(name)
        elif _base_version(have) != _base_version(want):
            moved.append(f"{name} {have} (lock: {want})")
    return moved, missing


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch: not installed"]
    lines = [f"CUDA: {torch.version.cuda or 'none (CPU build)'}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("GPU: none")
    lines.append(f"CPU threads: {torch.get_num_threads()}")
    return lines


def report() -> str:
    root = asset_root()
    lines = [f"unitune: {_version('unitune') or 'not installed (run from a checkout)'} (assets: {root})",
             f"python: {platform.python_version()} ({sys.executable})", f"platform: {platform.platform()}"]
    lines += [f"{name}: {_version(name) or 'not installed'}" for name in REPORTED]
    lines += _devices()
    lock_path = root / LOCK_FILE
    if not lock_path.is_file():
        lines.append(f"lock: no {LOCK_FILE} beside the assets (installed from a wheel?); cannot compare")
    else:
        moved, missing = lock_differences(read_lock(lock_path))
        verdict = "matches" if not moved else f"DIFFERS in {len(moved)} package(s)"
        lines.append(f"lock: the install {verdict} {lock_path}"
                     + (f" ({len(missing)} locked packages not installed: extras left out)" if missing else ""))
        lines += [f"  {entry}" for entry in moved]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> str:
    import argparse

    argparse.ArgumentParser(prog="unitune env", description="Print what a bug report needs.").parse_args(argv)
    text = report()
    print(text)
    return text

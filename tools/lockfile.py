"""Lock-file helpers for setup and the upgrade check (run with the virtualenv's python).

    python tools/lockfile.py freeze OUT       write the exact versions installed here as a lock
    python tools/lockfile.py diff OLD NEW     print the packages that moved between two locks
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from unitune.env import read_lock  # noqa: E402

HEADER = ("# Exact versions the default test suite passed on (Python {python}); installed by setup.sh and CI.\n"
          "# Refresh: bash tools/upgrade_check.sh --write-lock (newest versions the ranges allow, suite run first).\n"
          "# torch is the CPU build from the local wheel here (torch==X matches X+cpu); on a GPU machine pip takes\n"
          "# the CUDA build of the same version.\n")
SKIP = {"pip", "unitune"}  # the installer itself, and the project installed from this checkout


def freeze(out: str) -> None:
    lines = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    pins = []
    for line in lines:
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        if name.lower() in SKIP:
            continue
        pins.append(f"{name}=={version.split('+', 1)[0]}")  # torch 2.13.0+cpu -> torch==2.13.0
    python = ".".join(map(str, sys.version_info[:2]))
    Path(out).write_text(HEADER.format(python=python) + "\n".join(sorted(pins, key=str.lower)) + "\n")


def diff(old: str, new: str) -> int:
    before, after = read_lock(Path(old)), read_lock(Path(new))
    changes = [f"  {n}: {before.get(n, '-')} -> {after.get(n, '-')}"
               for n in sorted(set(before) | set(after)) if before.get(n) != after.get(n)]
    print(f"{len(changes)} package(s) moved against {old}" + (":" if changes else ""))
    print("\n".join(changes)) if changes else None
    return len(changes)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"freeze": freeze, "diff": diff}[command](*args)

#!/usr/bin/env python3
"""Answer every record of a data file (JSONL out, resumable), or chat one-shot with --interactive."""

from unitune.cli import generate

if __name__ == "__main__":
    generate()

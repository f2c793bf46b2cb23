#!/usr/bin/env python3
"""Merge a LoRA-family adapter into its (unquantized) base and save a plain transformers model directory."""

from unitune.cli import merge

if __name__ == "__main__":
    merge()

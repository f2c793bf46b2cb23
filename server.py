#!/usr/bin/env python3
"""Chat with a model (and adapter) in the terminal; 'clear' forgets the history, 'exit' leaves."""

from unitune.cli import chat

if __name__ == "__main__":
    chat()

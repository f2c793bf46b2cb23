#!/usr/bin/env python3
"""Serve one loaded model as a Gradio chat page and an OpenAI-compatible API on one port (127.0.0.1 by default)."""

from unitune.cli import web

if __name__ == "__main__":
    web()

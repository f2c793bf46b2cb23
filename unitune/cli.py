"""Console commands (pip install -e . provides them); the top-level scripts call the same functions."""

from __future__ import annotations

import importlib

from unitune.errors import run_cli


def _front_end(module: str):
    def main(argv: list[str] | None = None) -> None:
        run_cli(lambda args: importlib.import_module(module).run(args), argv)

    return main


finetune = _front_end("unitune.train")  # uniform_finetune.py
generate = _front_end("unitune.predict")  # generate.py
merge = _front_end("unitune.merge")  # merge.py
chat = _front_end("unitune.chat")  # server.py
web = _front_end("unitune.web")  # web.py

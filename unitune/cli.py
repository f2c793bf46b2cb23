"""`unitune <command>` and the console commands; the top-level scripts call the same functions.

    unitune train ...      = uniform_finetune.py / unitune-finetune
    unitune generate ...   = generate.py / unitune-generate
    unitune merge ...      = merge.py / unitune-merge
    unitune chat ...       = server.py / unitune-chat
    unitune web ...        = web.py / unitune-web
    unitune eval ...       = python -m unitune.eval (benchmarks), where installed
    unitune env            what a bug report needs
"""

from __future__ import annotations

import importlib
import sys

from unitune.errors import UnituneError, run_cli

# command -> (module whose run(argv) it calls, what it does); aliases point at the same entry
COMMANDS = {
    "train": ("unitune.train", "fine-tune a model with a PEFT method (uniform_finetune.py)"),
    "generate": ("unitune.predict", "answer the records of a data file (generate.py)"),
    "merge": ("unitune.merge", "merge an adapter into its base (merge.py)"),
    "chat": ("unitune.chat", "chat in the terminal (server.py)"),
    "web": ("unitune.web", "Gradio chat page and OpenAI-compatible API (web.py)"),
    "eval": ("unitune.evaluation", "benchmark runs: belle, mmcu, ceval, cmmlu, ie"),
    "env": ("unitune.env", "print versions, devices and whether the install matches the lock"),
}
ALIASES = {"finetune": "train", "sft": "train", "predict": "generate", "export": "merge", "webui": "web",
           "api": "web", "server": "chat"}


def _front_end(module: str):
    def main(argv: list[str] | None = None) -> None:
        run_cli(lambda args: importlib.import_module(module).run(args), argv)

    return main


finetune = _front_end("unitune.train")  # uniform_finetune.py
generate = _front_end("unitune.predict")  # generate.py
merge = _front_end("unitune.merge")  # merge.py
chat = _front_end("unitune.chat")  # server.py
web = _front_end("unitune.web")  # web.py


def usage() -> str:
    lines = ["usage: unitune <command> [flags]   (unitune <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<9} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        raise UnituneError(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
    module = COMMANDS[name][0]
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("unitune"):
            raise UnituneError(f"`unitune {name}` is not part of this installation ({module} is missing)") from None
        raise
    target.run(argv[1:])


def main(argv: list[str] | None = None) -> None:
    run_cli(_dispatch, sys.argv[1:] if argv is None else argv)

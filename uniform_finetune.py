#!/usr/bin/env python3
"""Fine-tune any registered --model_type with any --peft_type; with no flags, LoRA on the embedded default."""

from unitune.errors import run_cli


def main(argv=None):
    from unitune.train import run

    run(argv)


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python3
"""Fine-tune any registered --model_type with any --peft_type; with no flags, LoRA on the embedded default."""

from unitune.cli import finetune

if __name__ == "__main__":
    finetune()

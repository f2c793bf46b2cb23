#!/usr/bin/env python3
"""Batched vs one-question-at-a-time next-token logits scoring (`--method logits`), measured in one run.

    python bench/eval_logits_speed.py                              # CMMLU dev split, embedded default model
    python bench/eval_logits_speed.py --data_dir DIR --split test --batch_size 32 --threads 1

Scores the same questions with unitune.evaluation.answerers.choose_by_logits at --batch_size and at 1,
checks both choose the same letter for every question, and prints both times (model loading excluded),
questions per second and their ratio. The target is a ratio of at least 5. Data: --data_dir (a CMMLU
copy), default ../shared/data/cmmlu next to the repository. Exit status 1 when the letters differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "cmmlu"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--model_name_or_path", default=None, help="default: the embedded tiny model")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--questions", type=int, default=0, help="score only the first N (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.evaluation import mcq
    from unitune.evaluation.answerers import choose_by_logits
    from unitune.paths import embedded_base

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = SimpleNamespace(benchmark="cmmlu", data_dir=args.data_dir, split=args.split, n_shot=0, subjects=None)
    prompts = [q["prompt"] for q in mcq.questions(opts)][: args.questions or None]
    path = args.model_name_or_path or str(embedded_base())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    choose_by_logits(model, tokenizer, prompts[:4], batch_size=4)  # warm-up: first-call allocations
    times, letters = {}, {}
    for size in (args.batch_size, 1):
        started = time.perf_counter()
        letters[size] = choose_by_logits(model, tokenizer, prompts, batch_size=size)
        times[size] = time.perf_counter() - started
    same = letters[1] == letters[args.batch_size]
    print(f"{len(prompts)} CMMLU {args.split} questions, {Path(path).name}, {torch.get_num_threads()} torch threads")
    for size in (args.batch_size, 1):
        print(f"batch size {size:3d}: {times[size]:7.2f} s  ({len(prompts) / times[size]:7.1f} questions/s)")
    print(f"speed-up: {times[1] / times[args.batch_size]:.1f}x; same letter for every question: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

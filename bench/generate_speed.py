#!/usr/bin/env python3
"""Batched vs one-at-a-time greedy generation through generate.py's code path, measured in one run.

    python bench/generate_speed.py                               # embedded default model, 64 records
    python bench/generate_speed.py --model_name_or_path /tmp/tiny-llama --records 64 --max_new_tokens 32
    python bench/generate_speed.py --threads 0                   # torch's default thread count

Answers the same records with --batch_size 16 and --batch_size 1 (greedy), asserts the answers are
identical, and prints both generation times (model loading excluded) and their ratio. The target is a
ratio of at least 4. Data: the first records of data/synth/test.jsonl when it exists, else generated
instructions of varied length. Model: --model_name_or_path, else models/unitune-tiny, else a tiny random
Llama built on the spot (noted in the output). Exit status 1 when the answers differ.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EMBEDDED = ROOT / "models" / "unitune-tiny"
SYNTH_TEST = ROOT / "data" / "synth" / "test.jsonl"


def pick_model(given: str | None, work: Path) -> tuple[str, str]:
    if given:
        return given, given
    if (EMBEDDED / "config.json").is_file():
        return str(EMBEDDED), "embedded default models/unitune-tiny"
    import os

    from tests.tiny import build_model

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the tokenizer trainer draws blank progress lines straight onto fd 1
    try:
        path = build_model("llama", work / "tiny-llama")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    return str(path), "tiny random llama (models/unitune-tiny not built yet)"


def write_records(path: Path, count: int) -> str:
    if SYNTH_TEST.is_file():
        lines = [line for line in SYNTH_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(lines) >= count:
            path.write_text("\n".join(lines[:count]) + "\n", encoding="utf-8")
            return f"first {count} records of data/synth/test.jsonl"
    records = [{"instruction": f"Add {i} and {3 * i + 7}, then explain the steps." + " Be brief." * (i % 5),
                "input": " ".join(str(j) for j in range(i % 9))} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return f"{count} generated instructions"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch; 0: torch's default. 1 by default: a tiny model gains nothing "
                             "from more, and on a shared, oversubscribed CPU every parallel op can stall")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from unitune import predict

    with tempfile.TemporaryDirectory(prefix="unitune-bench-") as tmp:
        work = Path(tmp)
        model, model_note = pick_model(args.model_name_or_path, work)
        data = work / "records.jsonl"
        data_note = write_records(data, args.records)
        common = ["--model_name_or_path", model, "--data", str(data), "--decoding", "greedy",
                  "--max_new_tokens", str(args.max_new_tokens)]
        # warm-up (thread pools, kernels, allocator), not measured
        predict.run(common + ["--output", str(work / "warmup.jsonl"), "--max_samples", "4", "--max_new_tokens", "2"])
        runs = {}
        for batch in (args.batch_size, 1):
            out = work / f"batch{batch}.jsonl"
            stats = predict.run(common + ["--output", str(out), "--batch_size", str(batch)])
            answers = [json.loads(line)["generate"] for line in out.read_text(encoding="utf-8").splitlines()]
            runs[batch] = (stats, answers)

    (fast, batched), (slow, single) = runs[args.batch_size], runs[1]
    identical = batched == single
    ratio = slow["seconds"] / fast["seconds"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"model: {model_note}; data: {data_note}; greedy, max_new_tokens {args.max_new_tokens}; {device}")
    for batch, (stats, _) in sorted(runs.items(), reverse=True):
        print(f"  --batch_size {batch:>2}: {stats['seconds']:7.2f} s, {stats['new_tokens']:6d} new tokens, "
              f"{stats['new_tokens'] / stats['seconds']:8.1f} tokens/s")
    print(f"speed ratio batch {args.batch_size} / batch 1: {ratio:.2f}x (target >= 4x: "
          f"{'met' if ratio >= 4 else 'NOT met'})")
    print(f"identical answers: {identical} ({sum(a == b for a, b in zip(batched, single))}/{len(single)})")
    if not identical:
        for i, (a, b) in enumerate(zip(batched, single)):
            if a != b:
                print(f"  first difference, record {i}: batch {args.batch_size} {a!r} vs batch 1 {b!r}")
                break
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

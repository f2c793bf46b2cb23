#!/usr/bin/env python3
"""Re-score the MMCU repository's published per-question results of seven models and print our domain and
overall averages next to the published table (README of MMCU; ../shared/data/README.md).

    python bench/mmcu_reproduce.py [--results ../shared/data/mmcu_results]

Each model's result files become a predictions JSONL file scored by `python -m unitune.eval mmcu
--predictions` (reports under output/mmcu_reproduce/<model>/). Exit status 1 when a figure is off by more
than 0.001.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PUBLISHED = {  # medicine, law, psychology, education, average
    "bloomz_560m": (0.298, 0.163, 0.201, 0.247, 0.227), "bloomz_1b1": (0.213, 0.14, 0.187, 0.275, 0.204),
    "bloomz_3b": (0.374, 0.18, 0.319, 0.315, 0.297), "bloomz_7b1_mt": (0.364, 0.174, 0.346, 0.316, 0.300),
    "chatglm6b": (0.338, 0.169, 0.288, 0.333, 0.282), "MOSS16B": (0.234, 0.133, 0.211, 0.253, 0.208),
    "gpt3.5turbo": (0.512, 0.239, 0.447, 0.455, 0.413),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT.parent / "shared" / "data" / "mmcu_results"))
    parser.add_argument("--out", default="output/mmcu_reproduce")
    args = parser.parse_args(argv)
    from unitune.evaluation import mmcu
    from unitune.evaluation.cli import main as evaluate

    dirs = {d.name.split("_test_results")[0]: d for d in Path(args.results).iterdir() if d.is_dir()}
    lines = ["| model | medicine | law | psychology | education | average | largest difference |", "|---" * 7 + "|"]
    worst = 0.0
    for model, published in PUBLISHED.items():
        preds = Path(args.out) / f"{model}.jsonl"
        preds.parent.mkdir(parents=True, exist_ok=True)
        preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mmcu.published_records(dirs[model])),
                         encoding="utf-8")
        result = evaluate(["mmcu", "--predictions", str(preds), "--output_dir", str(Path(args.out) / model)])
        ours = [result["breakdown"]["domain"][d]["score"] for d in mmcu.DOMAINS] + [result["overall"]]
        diff = max(abs(a - b) for a, b in zip(ours, published))
        worst = max(worst, diff)
        cells = " | ".join(f"{a:.4f} ({b})" for a, b in zip(ours, published))
        lines.append(f"| {model} | {cells} | {diff:.4f} |")
    print("\nours (published), zero-shot:\n" + "\n".join(lines))
    print(f"largest difference: {worst:.4f} (tolerance 0.001)")
    return 0 if worst <= 0.001 else 1


if __name__ == "__main__":
    sys.exit(main())

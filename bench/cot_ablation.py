#!/usr/bin/env python3
"""The shape of the Alpaca-CoT paper's chain-of-thought ablation: one base tuned on the same instructions
with their rationales and with the rationales stripped (answer lines only), scored the same way.

    python bench/cot_ablation.py                                   # toy scale: the embedded default
    python bench/cot_ablation.py --max_steps 600 --out bench/results/cot
    python bench/cot_ablation.py --model_type llama --model_name_or_path BASE --data my_cot.jsonl \\
        --eval_data my_test.jsonl --eval_benchmarks ie cmmlu --eval_benchmark_dir DATA -- --epochs 3 ...

Each variant is one uniform_finetune.py run (in this process, one after the other) with the same flags;
the stripped variant keeps only each output's last `Answer:` / `答案：` line. Both are scored on held-out
exact match (the answer after the marker, as the fine-tune run reports it) and on every --eval_benchmarks
benchmark (default: ie, extraction F1 on the held-out triples); the untuned base is scored once. Prints a
markdown table and writes it, with each run's results.json, under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def strip_rationale(output: str) -> str:
    """An output's last answer line (`Answer: ...` / `答案：...`), or the output itself when it has none."""
    lines = [line for line in output.splitlines() if line.strip()]
    marked = [line for line in lines if line.lstrip().startswith(("Answer:", "Answer：", "答案：", "答案:"))]
    return marked[-1].strip() if marked else output


def write_variants(data: str, out: Path) -> dict[str, Path]:
    from unitune.data import load_file, resolve

    records = load_file(resolve(data))
    keep = ("instruction", "input", "output", "system", "history")
    variants = {"with rationales": records,
                "answer lines only": [{**r, "output": strip_rationale(r["output"])} for r in records]}
    paths = {}
    for name, recs in variants.items():
        path = out / f"train-{name.split()[0]}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({k: r[k] for k in keep if r.get(k)}, ensure_ascii=False) + "\n"
                                for r in recs), encoding="utf-8")
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="unitune-synth", help="training data with rationales (name or file)")
    parser.add_argument("--eval_data", default=None, help="held-out file; default: the one the data names")
    parser.add_argument("--eval_benchmarks", nargs="+", default=["ie"])
    parser.add_argument("--eval_benchmark_dir", default=None)
    parser.add_argument("--model_type", default=None)
    parser.add_argument("--model_name_or_path", default=None, help="default: the embedded tiny model")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--eval_samples", type=int, default=200)
    parser.add_argument("--out", default="output/cot_ablation")
    parser.add_argument("rest", nargs="*", help="after --: more uniform_finetune.py flags for both runs")
    args = parser.parse_args(argv)

    from unitune.data import eval_files
    from unitune.train import run

    out = Path(args.out)
    paths = write_variants(args.data, out)
    eval_data = args.eval_data or (str(eval_files([args.data])[0]) if eval_files([args.data]) else None)
    common = ["--max_steps", str(args.max_steps), "--eval_samples", str(args.eval_samples),
              "--eval_benchmarks", *args.eval_benchmarks, *args.rest]
    for flag in ("model_type", "model_name_or_path", "eval_benchmark_dir"):
        if getattr(args, flag):
            common += [f"--{flag}", getattr(args, flag)]
    if eval_data:
        common += ["--eval_data", eval_data]
    rows, base = [], None
    for k, (name, path) in enumerate(paths.items()):
        results = run(["--data", str(path), "--output_dir", str(out / f"run-{k}"), "--eval_base",
                       str(k == 0).lower(), *common])
        if k == 0:
            base = results
        rows.append((name, results))
    names = list(rows[0][1]["benchmarks"])
    head = "| model | held-out exact match | " + " | ".join(f"{n} {rows[0][1]['benchmarks'][n]['headline']}"
                                                         for n in names) + " |"
    lines = [head, "|---" * (len(names) + 2) + "|"]

    def cell(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines.append("| untuned base | " + cell(base.get("base_accuracy")) + " | "
                 + " | ".join(cell(base["base_benchmarks"][n]["overall"]) for n in names) + " |")
    for name, results in rows:
        lines.append(f"| tuned, {name} | " + cell(results.get("tuned_accuracy")) + " | "
                     + " | ".join(cell(results["benchmarks"][n]["overall"]) for n in names) + " |")
    table = "\n".join(lines) + "\n"
    (out / "cot_ablation.md").write_text(table, encoding="utf-8")
    print(f"\nchain-of-thought ablation, {args.max_steps} steps each ({out / 'cot_ablation.md'}):\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Batched `--method logits` scoring against one question per forward pass, measured side by side in one run.

    python bench/eval_logits_speed.py                     # 5-shot CMMLU prompts from ../shared/data/cmmlu
    python bench/eval_logits_speed.py --data_dir CMMLU_COPY --subjects 67 --questions 0   # a real test split
    python bench/eval_logits_speed.py --quick --out speed.json                            # seconds, for tests

The workload is what `python -m unitune.eval cmmlu --method logits --n_shot 5` scores (prompts built by
unitune.evaluation.mcq, the CLI's own builder): each subject's instruction and its five dev questions as
examples, then a test question. Where --data_dir has no test split (../shared holds CMMLU's dev split only),
the test questions of each subject are the dev questions of the other subjects, written into a temporary
copy laid out as CMMLU is (dev/ as it is, test/<subject>.csv), so the prompts have the real lengths.

Paths, each on the same prompts and the same model (model loading excluded, a warm-up first):
  one at a time   one forward pass per question over its whole prompt (batch size 1, no sharing), keeping
                  only the last position's logits (logits_to_keep=1), as the batched path does;
  whole, batched  whole prompts, --batch_size per forward pass, left-padded, length-sorted;
  shared, single  a subject's common prefix run once, its key/value cache reused, one question per pass;
  shared, batched what `--method logits` does: the prefix once, the rest of --batch_size questions per pass.
Each path scores every prompt twice, the paths in the order listed and then reversed (times are the sums), so
a load that changes during the run weighs on all of them alike. The speed-up is one-at-a-time time over
shared-batched time; every path must choose the same letter for
every question and give logits within 1e-3 of the one-at-a-time ones (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PATHS = {  # name: (batch size or None for --batch_size, share the prefix)
    "one at a time": (1, False),
    "whole, batched": (None, False),
    "shared, single": (1, True),
    "shared, batched": (None, True),
}
WHAT = {
    "one at a time": "1 question a forward pass, whole prompt, last position's logits only",
    "whole, batched": "B questions a pass, whole prompts left-padded, last position's logits only",
    "shared, single": "prefix once per subject, then 1 question's rest a pass on its cache",
    "shared, batched": "prefix once per subject, then B questions' rests a pass on its cache (the CLI path)",
}


def build_split(data_dir: Path, subjects: int, per_subject: int, work: Path) -> tuple[Path, str]:
    """The data dir and split to score: the real test split where there is one, else a test-shaped copy."""
    if (data_dir / "test").is_dir():
        return data_dir, "test"
    dev = sorted((data_dir / "dev").glob("*.csv"))
    if len(dev) < 2:
        raise SystemExit(f"{data_dir}/dev: expected CMMLU's dev CSVs")
    rows = {p.stem: list(csv.reader(p.open(encoding="utf-8-sig", newline=""))) for p in dev}
    (work / "dev").mkdir(parents=True)
    (work / "test").mkdir()
    chosen = [p.stem for p in dev][:subjects]
    for i, subject in enumerate(chosen):
        (work / "dev" / f"{subject}.csv").write_bytes((data_dir / "dev" / f"{subject}.csv").read_bytes())
        others = [r for s, table in rows.items() if s != subject for r in table[1:]]
        # a deterministic spread over the other subjects' questions
        picked = [others[(j * 37 + i * 11) % len(others)] for j in range(per_subject)]
        with (work / "test" / f"{subject}.csv").open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([rows[subject][0], *picked])
    return work, "test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "cmmlu"))
    parser.add_argument("--model_name_or_path", default=None, help="default: the embedded tiny model")
    parser.add_argument("--n_shot", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=4, help="the first N subjects (0: all)")
    parser.add_argument("--questions", type=int, default=48,
                        help="test questions per subject where the copy is built (0 with a real test split: all)")
    parser.add_argument("--batch_size", type=int, default=8, help="questions a pass (the CLI's --batch_size default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="2 subjects x 6 questions, for tests")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.subjects, args.questions = 2, 6

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.evaluation import mcq
    from unitune.evaluation.answerers import letter_logits, prefix_groups
    from unitune.paths import embedded_base

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder, split = build_split(Path(args.data_dir), args.subjects or 10**6, args.questions or 24, Path(tmp))
        opts = SimpleNamespace(benchmark="cmmlu", data_dir=str(folder), split=split, n_shot=args.n_shot,
                               subjects=None)
        questions = mcq.questions(opts)
    if folder == Path(args.data_dir):  # a real test split: its first subjects, their first questions
        keep, chosen = sorted({q["subject"] for q in questions})[: args.subjects or None], []
        for subject in keep:
            chosen += [q for q in questions if q["subject"] == subject][: args.questions or None]
        questions = chosen
    prompts = [q["prompt"] for q in questions]
    path = args.model_name_or_path or str(embedded_base())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    encoded = tokenizer(prompts)["input_ids"]
    groups = prefix_groups(encoded)
    tokens = sum(len(e) for e in encoded)
    rest = sum(len(encoded[i]) - shared for shared, members in groups if len(members) > 1 for i in members)
    prefixes = sum(shared for shared, members in groups if len(members) > 1)
    letter_logits(model, tokenizer, prompts[:4], batch_size=4)  # warm-up: first-call allocations
    times, logits = dict.fromkeys(PATHS, 0.0), {}
    for name in [*PATHS, *reversed(PATHS)]:  # each path twice, in mirrored order: a load that drifts evens out
        size, share = PATHS[name]
        started = time.perf_counter()
        logits[name] = letter_logits(model, tokenizer, prompts, batch_size=size or args.batch_size,
                                     share_prefix=share)
        times[name] += time.perf_counter() - started
    ref = logits["one at a time"]
    agree = {name: bool((v.argmax(-1) == ref.argmax(-1)).all()) for name, v in logits.items()}
    diff = {name: float((v - ref).abs().max()) for name, v in logits.items()}
    ok = all(agree.values()) and max(diff.values()) < 1e-3
    speedup = times["one at a time"] / times["shared, batched"]
    print(f"{len(prompts)} {args.n_shot}-shot CMMLU prompts ({len({q['subject'] for q in questions})} subjects, "
          f"{'test split' if folder == Path(args.data_dir) else 'test questions drawn from other subjects dev'}), "
          f"{Path(path).name}, {torch.get_num_threads()} torch threads, batch size B={args.batch_size}")
    bound = tokens / max(prefixes + rest, 1)
    print(f"tokens: {tokens} in whole prompts; {prefixes} in {sum(len(m) > 1 for _, m in groups)} shared prefixes "
          f"+ {rest} after them: sharing runs {bound:.1f}x fewer tokens (its speed-up where a token costs the same "
          f"in both paths; each token after a prefix also attends to it)")
    for name in PATHS:
        print(f"{name:16s} {times[name]:7.2f} s  {2 * len(prompts) / times[name]:7.1f} q/s  "
              f"{times['one at a time'] / times[name]:5.1f}x  max |logit diff| {diff[name]:.1e}  "
              f"same letters: {agree[name]}  ({WHAT[name]})")
    print(f"speed-up of batched scoring over one question at a time: {speedup:.1f}x; "
          f"same predictions: {ok}")
    if args.out:
        Path(args.out).write_text(json.dumps({"questions": len(prompts), "threads": torch.get_num_threads(),
                                              "batch_size": args.batch_size, "seconds": times, "speedup": speedup, "token_ratio": bound,
                                              "same_letters": agree, "max_logit_diff": diff, "ok": ok},
                                             indent=1) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

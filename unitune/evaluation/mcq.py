"""C-Eval and CMMLU: four-option single-answer questions in CSV, scored per subject, per category and overall.

The subject -> category maps and the prompt wording are data, `eval/ceval/benchmark.json` (52 subjects in 4
categories, from C-Eval's subject_mapping.json) and `eval/cmmlu/benchmark.json` (67 subjects in 5
categories, from CMMLU's categories.py; a CMMLU subject may sit in two categories, e.g. Social Science and
China specific). `--data_dir` is a copy of the benchmark: `<data_dir>/<split>/*.csv` (C-Eval names them
`<subject>_<split>.csv`, CMMLU `<subject>.csv`) or a folder of CSVs itself; `--n_shot 5` takes the first
questions of `<data_dir>/dev` as examples. Category and overall accuracy count questions (the published
harnesses concatenate the per-question results).
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

from unitune.errors import UnituneError
from unitune.evaluation.choice import LETTERS, choice_extract
from unitune.evaluation.records import group_accuracy, where
from unitune.paths import asset

FIELDS = ("prediction", "answer", "subject")
METHODS = ("logits", "generate")
DISPLAY = {"scale": 100, "digits": 2}


@cache
def definition(name: str) -> dict:
    return json.loads(asset("eval", f"{name}/benchmark.json").read_text(encoding="utf-8"))


def subject_of(name: str, path: Path, split: str) -> str:
    """The subject key of a CSV file name (C-Eval's `<subject>_<split>.csv` or CMMLU's `<subject>.csv`)."""
    stem = path.stem
    for suffix in (f"_{split}", "_test", "_val", "_dev"):
        if stem.endswith(suffix) and stem[: -len(suffix)] in definition(name)["subjects"]:
            return stem[: -len(suffix)]
    if stem not in definition(name)["subjects"]:
        raise UnituneError(f"{path}: '{stem}' is not a {name} subject (eval/{name}/benchmark.json lists the "
                           f"{len(definition(name)['subjects'])} published ones)")
    return stem


def read_csv(name: str, path: Path) -> list[dict]:
    """Rows of one subject file as {question, A, B, C, D, answer}."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise UnituneError(f"{path}: not UTF-8 text") from None
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    columns = {}
    for field in ("question", "A", "B", "C", "D", "answer"):
        key = field if len(field) == 1 else field.lower()
        found = header.index(key) if key in header else (lower.index(key) if key in lower else None)
        if found is None:
            raise UnituneError(f"{path}: column '{field}' is missing (a {name} file has "
                               f"{','.join(definition(name)['csv_columns'])})")
        columns[field] = found
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns.values()):
            raise UnituneError(f"{path}: line {lineno}: {len(row)} fields, expected {len(header)}")
        out.append({field: row[i].strip() for field, i in columns.items()})
    return out


def split_files(name: str, folder: Path, split: str) -> dict[str, Path]:
    base = folder / split if (folder / split).is_dir() else folder
    files = sorted(base.glob("*.csv"))
    if not files:
        raise UnituneError(f"--data_dir {folder}: no CSV files in {base} (expected a copy of {name} with "
                           f"<split>/*.csv; --split names the split)")
    return {subject_of(name, p, split): p for p in files}


def check(opts) -> None:
    if opts.predictions is None and opts.data_dir is None:
        raise UnituneError(f"{opts.benchmark}: give --data_dir (a copy of the benchmark's CSVs) or --predictions FILE")
    if opts.n_shot < 0:
        raise UnituneError(f"--n_shot must be 0 or more, got {opts.n_shot}")
    if opts.subjects:
        known = definition(opts.benchmark)["subjects"]
        for subject in opts.subjects:
            if subject not in known:
                raise UnituneError(f"--subjects {subject}: not a {opts.benchmark} subject")


def format_question(spec: dict, row: dict) -> str:
    return spec["question"].format(**row)


def questions(opts) -> list[dict]:
    name, folder = opts.benchmark, Path(opts.data_dir)
    spec = definition(name)
    files = split_files(name, folder, opts.split)
    dev = split_files(name, folder, "dev") if opts.n_shot else {}
    out = []
    for subject, path in files.items():
        if opts.subjects and subject not in opts.subjects:
            continue
        shots = read_csv(name, dev[subject])[: opts.n_shot + 1] if subject in dev else []
        if opts.n_shot and not shots:
            raise UnituneError(f"--n_shot {opts.n_shot}: no dev file for {subject} in {folder / 'dev'}")
        head = spec["instruction"].format(subject=spec["subjects"][subject]["name_zh"])
        for i, row in enumerate(read_csv(name, path)):
            if row["answer"] not in LETTERS:
                raise UnituneError(f"{path}: question {i + 1}: answer {row['answer']!r} is not one of A B C D "
                                   f"(the test split of {name} has no answers: use --split val or dev)")
            own = [s for s in shots if s["question"] != row["question"]][: opts.n_shot]  # dev run: never itself
            examples = "".join(format_question(spec, s) + spec["shot_answer"].format(answer=s["answer"]) for s in own)
            out.append({"id": f"{subject}-{i}", "prompt": head + examples + format_question(spec, row),
                        "answer": row["answer"], "subject": subject})
    return out


def score(records: list[dict], opts=None, path=None) -> dict:
    name = opts.benchmark
    spec = definition(name)
    graded = []
    for rec in records:
        if rec["subject"] not in spec["subjects"]:
            raise UnituneError(f"{where(rec, path)}: field 'subject' is {rec['subject']!r}, not a {name} subject")
        letter = choice_extract(rec["prediction"])
        graded.append((rec["subject"], letter == (rec["answer"] or "").strip(), letter is None))
    subjects = group_accuracy(graded)
    categories: dict[str, dict] = {}
    for category in spec["categories"]:
        items = [g for g in graded if category in spec["subjects"][g[0]]["categories"]]
        if items:
            entry = group_accuracy([(category, ok, bad) for _, ok, bad in items])[category]
            categories[category] = {"score": entry["accuracy"], "n": entry["n"], "unparsed": entry["unparsed"],
                                    "subjects": len({g[0] for g in items})}
    total = group_accuracy([("all", ok, bad) for _, ok, bad in graded])["all"]
    return {"benchmark": name, "headline": "average", "overall": total["accuracy"], "n": total["n"],
            "unparsed": total["unparsed"], "unparsed_label": "unparsed",
            "breakdown": {"category": categories,
                          "subject": {s: {"score": e["accuracy"], "n": e["n"], "unparsed": e["unparsed"]}
                                      for s, e in subjects.items()}},
            "display": DISPLAY}

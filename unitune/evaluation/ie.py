"""Extraction F1: answers that are sets of tuples (triples such as `(写生随笔,作者,张来亮)`, entities, events).

Predicted and reference sets are parsed the same way: the text after the last `Answer:` / `答案：` marker
(else all of it), every `(...)` or `（...）` group split on English or Chinese commas, semicolons or `、`,
spaces collapsed and case folded. A reference without brackets (a plain entity list) is read as one-element
tuples split on those separators or line breaks, and so is the prediction. A prediction that should hold
tuples but has no bracketed group (and is not an explicit empty answer such as `无` / `none`) is a parse
failure: it predicts nothing and is counted. Micro precision, recall and F1 over all questions.
"""

from __future__ import annotations

import re
from pathlib import Path

from unitune.errors import UnituneError
from unitune.evaluation.records import where
from unitune.paths import asset

FIELDS = ("prediction", "answer")
METHODS = ("generate",)
DISPLAY = {"scale": 100, "digits": 2}
DEFAULT_DATA = "synth/test.jsonl"  # under the data/ asset folder: the embedded held-out set (its triples)

_MARKER = re.compile(r"(?:Answer|答案)\s*[:：]", re.IGNORECASE)
_GROUP = re.compile(r"[(（]([^()（）]*)[)）]")
_SEP = re.compile(r"[,，;；、|]")
_LIST_SEP = re.compile(r"[,，;；、|\n]")
_EMPTY = {"无", "没有", "none", "null", "n/a", "[]", "{}", "()", "（）", "空"}


def _answer_part(text: str) -> str:
    marks = list(_MARKER.finditer(text))
    return text[marks[-1].end():] if marks else text


def _norm(item: str) -> str:
    return " ".join(item.strip().strip("\"'“”‘’「」[]【】").split()).casefold()


def is_bracketed(text: str) -> bool:
    return bool(_GROUP.search(_answer_part(text or "")))


def parse_tuples(text: str | None, bracketed: bool = True) -> set[tuple[str, ...]] | None:
    """The set of tuples in `text`; None when it cannot be read as one (see the module notes)."""
    body = _answer_part(text or "").strip()
    if not bracketed:
        return {(item,) for item in (_norm(x) for x in _LIST_SEP.split(body)) if item}
    groups = _GROUP.findall(body)
    if not groups:
        return set() if _norm(body).strip("。.") in _EMPTY else None
    tuples = set()
    for group in groups:
        parts = tuple(_norm(p) for p in _SEP.split(group))
        if any(parts):
            tuples.add(parts)
    return tuples


def f1_counts(pred: set, gold: set) -> tuple[int, int, int]:
    return len(pred & gold), len(pred), len(gold)


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def check(opts) -> None:
    if opts.data and not Path(opts.data).is_file():
        raise UnituneError(f"--data {opts.data}: no such file")


def questions(opts) -> list[dict]:
    from unitune.data import load_file

    path = Path(opts.data) if opts.data else asset("data", DEFAULT_DATA)
    out = []
    for i, rec in enumerate(load_file(path)):
        if not is_bracketed(rec["output"]):
            continue  # the held-out set mixes tasks: only the extraction ones are scored here
        out.append({"id": f"ie-{i}", "prompt": rec["instruction"], "input": rec["input"],
                    "answer": rec["output"], "subject": rec.get("subject") or "all"})
    if not out:
        raise UnituneError(f"{path}: no record whose output holds (…) tuples to score")
    return out


def score(records: list[dict], opts=None, path=None) -> dict:
    totals: dict[str, list[int]] = {}
    failures: dict[str, int] = {}
    for rec in records:
        bracketed = is_bracketed(rec["answer"] or "")
        gold = parse_tuples(rec["answer"], bracketed)
        if gold is None or not gold:
            raise UnituneError(f"{where(rec, path)}: field 'answer' holds no tuples: {str(rec['answer'])[:60]!r}")
        pred = parse_tuples(rec["prediction"], bracketed)
        subject = rec.get("subject") or "all"
        failures[subject] = failures.get(subject, 0) + (pred is None)
        counts = f1_counts(pred or set(), gold)
        acc = totals.setdefault(subject, [0, 0, 0, 0])
        for k, value in enumerate((*counts, 1)):
            acc[k] += value
    tp, n_pred, n_gold, n = (sum(t[k] for t in totals.values()) for k in range(4))
    precision, recall, f1 = prf(tp, n_pred, n_gold)
    subjects = {}
    for subject, (s_tp, s_pred, s_gold, s_n) in totals.items():
        p, r, f = prf(s_tp, s_pred, s_gold)
        subjects[subject] = {"score": f, "precision": p, "recall": r, "n": s_n, "unparsed": failures[subject]}
    return {"benchmark": "ie", "headline": "F1", "overall": f1, "n": n, "unparsed": sum(failures.values()),
            "unparsed_label": "parse failures",
            "breakdown": {"metric": {"precision": {"score": precision, "n": n_pred, "unparsed": 0},
                                     "recall": {"score": recall, "n": n_gold, "unparsed": 0},
                                     "F1": {"score": f1, "n": n, "unparsed": sum(failures.values())}},
                          "subject": subjects},
            "counts": {"true_positives": tp, "predicted": n_pred, "gold": n_gold}, "display": DISPLAY}

"""Belle-eval (LianjiaTech/BELLE eval/): 1,000 questions in 10 classes, each answer scored 0-1 by a judge model.

Data: the official JSON Lines set `{question, std_answer, class}` and the judge prompts `{class, prompt}`
(`--data` and `--judge_prompts`, or `--data_dir` holding eval_set.json / eval_prompt.json or
belle_eval_set.json / belle_eval_prompt.json). Class names are normalized (case, no-break and repeated
spaces) before the prompt is looked up: the set says `open qa` and `closed\\xa0qa`, the prompts `open QA`.

The judge message is built as BELLE built it; generation, brainstorming and rewrite go without the
standard answer. The score is the number after `得分:` / `得分：`, clamped to [0, 1]; a reply without one is
asked again (--judge_retries), then recorded as unscored and counted, never as zero. Reported: the mean
per class x 100 and `Avg.`, the unweighted mean of the class means (the paper's convention).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unitune.errors import UnituneError
from unitune.evaluation.records import mean, where
from unitune.writable import write_atomic

FIELDS = ("prediction", "question", "class")
METHODS = ("generate",)
DISPLAY = {"scale": 100, "digits": 1}
NO_REFERENCE = {"generation", "brainstorming", "rewrite"}
SET_NAMES = ("eval_set.json", "belle_eval_set.json")
PROMPT_NAMES = ("eval_prompt.json", "belle_eval_prompt.json")
_SCORE = re.compile(r"得分\s*[:：]\s*([0-9]+(?:\.[0-9]+)?)")


def normalize_class(name: str) -> str:
    return " ".join(str(name).replace("\xa0", " ").split()).casefold()


def parse_score(reply: str | None) -> float | None:
    """The judge's score in [0, 1], or None when the reply has none."""
    found = _SCORE.search(reply or "")
    if not found:
        return None
    return min(1.0, max(0.0, float(found.group(1))))


def judge_message(prompt: str, question: str, std_answer: str, answer: str, cls: str) -> str:
    if normalize_class(cls) in NO_REFERENCE:
        return f"{prompt} {question} 模型回答：'{answer}'。请针对模型回答给出得分，顺便给出理由："
    return f"{prompt} {question} 标准回答：{std_answer} 模型回答：'{answer}'。请针对模型回答给出得分，顺便给出理由："


def _jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise UnituneError(f"{path}: no such file")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UnituneError(f"{path}: line {lineno}: not JSON (expected JSON Lines)") from None
        for name in fields:
            if not isinstance(rec, dict) or not isinstance(rec.get(name), str):
                raise UnituneError(f"{path}: line {lineno}: field '{name}' is missing or not a string")
        out.append({**rec, "_line": lineno})
    return out


def _find(opts, names: tuple[str, ...], given: str | None, what: str) -> Path:
    if given:
        return Path(given)
    folders = [Path(opts.data_dir)] if opts.data_dir else []
    if opts.data:
        folders.append(Path(opts.data).parent)
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise UnituneError(f"belle: give --{what} FILE (or --data_dir holding {' or '.join(names)})")


def prompts(opts) -> dict[str, str]:
    path = _find(opts, PROMPT_NAMES, opts.judge_prompts, "judge_prompts")
    return {normalize_class(r["class"]): r["prompt"] for r in _jsonl(path, ("class", "prompt"))}


def check(opts) -> None:
    known = prompts(opts)  # the prompt file is needed by every run: a judge scores every answer
    if opts.predictions is None:
        path = _find(opts, SET_NAMES, opts.data, "data")
        for rec in _jsonl(path, ("question", "class")):
            if normalize_class(rec["class"]) not in known:
                raise UnituneError(f"{path}: line {rec['_line']}: class {rec['class']!r} has no judge prompt")
    if not opts.judge_base_url or not opts.judge_model:
        raise UnituneError("belle: --judge_base_url and --judge_model are required (an OpenAI-compatible judge)")


def questions(opts) -> list[dict]:
    path = _find(opts, SET_NAMES, opts.data, "data")
    return [{"id": f"belle-{i}", "prompt": r["question"], "question": r["question"], "class": r["class"],
             "answer": r.get("std_answer") or "", "subject": normalize_class(r["class"])}
            for i, r in enumerate(_jsonl(path, ("question", "class")))]


def score(records: list[dict], opts, path=None) -> dict:
    from unitune.evaluation.judge import Judge, JudgeError

    known = prompts(opts)
    for rec in records:
        if normalize_class(rec["class"]) not in known:
            raise UnituneError(f"{where(rec, path)}: class {rec['class']!r} has no judge prompt")
    judge = Judge(opts.judge_base_url, opts.judge_model, opts.judge_api_key, opts.judge_cache,
                  opts.judge_concurrency, backoff=opts.judge_backoff)

    def grade(rec: dict) -> dict:
        cls = normalize_class(rec["class"])
        std = rec.get("answer", rec.get("std_answer")) or ""
        messages = [{"role": "user", "content": judge_message(known[cls], rec["question"], std,
                                                              rec["prediction"] or "", cls)}]
        reply, value, failure = None, None, None
        for attempt in range(opts.judge_retries + 1):
            try:
                reply = judge.ask(messages, attempt)
            except JudgeError as err:
                failure = str(err)
                break
            value = parse_score(reply)
            if value is not None:
                break
        return {"id": rec.get("id"), "class": cls, "score": value, "reply": reply, "error": failure}

    try:
        with ThreadPoolExecutor(max_workers=opts.judge_concurrency) as pool:
            graded = list(pool.map(grade, records))
    finally:
        judge.close()
    classes: dict[str, dict] = {}
    for item in graded:
        entry = classes.setdefault(item["class"], {"scores": [], "n": 0, "unparsed": 0})
        entry["n"] += 1
        if item["score"] is None:
            entry["unparsed"] += 1
        else:
            entry["scores"].append(item["score"])
    breakdown = {cls: {"score": mean(e["scores"]), "n": e["n"], "unparsed": e["unparsed"]}
                 for cls, e in sorted(classes.items())}
    if opts.output_dir:
        write_atomic(Path(opts.output_dir) / "judgements.jsonl",
                     "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in graded))
    return {"benchmark": "belle", "headline": "Avg.", "overall": mean([e["score"] for e in breakdown.values()]),
            "n": len(graded), "unparsed": sum(e["unparsed"] for e in breakdown.values()),
            "unparsed_label": "unscored", "breakdown": {"class": breakdown}, "display": DISPLAY,
            "judge": {"model": opts.judge_model, "calls": judge.calls, "cache_hits": judge.cache_hits,
                      "failed": sum(g["error"] is not None for g in graded)}}

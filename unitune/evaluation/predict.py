"""Generating runs: the model under test answers every question, batch by batch, into a predictions file.

The model is a local one through the shared loader (`--model_type --model_name_or_path --lora_dir ...`) or
any OpenAI-compatible endpoint (`--model_base_url --model_name --model_api_key`). The file is
`<output_dir>/predictions/<key>.jsonl`, the key a hash of the benchmark, the questions, the method and the
answerer's identity (model and adapter directories with their files' sizes and times, template, decoding,
endpoint): a changed setting writes a new file and never reuses old answers; the same settings resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from unitune.writable import write_atomic

log = logging.getLogger(__name__)
KEEP = ("id", "answer", "subject", "domain", "class", "question")  # question fields a predictions line repeats


def fingerprint_dir(path: str | None) -> list | None:
    """What identifies a model directory's content cheaply: every file's name, size and modification time."""
    if not path:
        return None
    root = Path(path)
    files = [p for p in root.rglob("*") if p.is_file()]
    # a training output dir also holds checkpoints and these evaluations' own files: not the model
    files = [p for p in files if not p.relative_to(root).parts[0].startswith(("checkpoint-", "eval"))]
    return [str(root.resolve())] + sorted([str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns]
                                          for p in files)


def run_key(benchmark: str, method: str, questions: list[dict], identity: dict) -> str:
    blob = json.dumps({"benchmark": benchmark, "method": method, "identity": identity,
                       "questions": [[q["id"], q["prompt"], q.get("input", ""), q["answer"]] for q in questions]},
                      ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def read_done(path: Path, key: str, ids: set[str]) -> dict[str, dict]:
    """Lines an interrupted run of the same settings left (a cut last line is dropped)."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed run was writing
        if isinstance(rec, dict) and rec.get("_key") == key and rec.get("id") in ids:
            done[rec["id"]] = rec
    return done


def predict(benchmark: str, method: str, questions: list[dict], answerer, output_dir: str | Path,
            batch_size: int) -> tuple[list[dict], Path]:
    """Predictions for every question (resumed where a run of the same settings stopped) and their file."""
    from tqdm.auto import tqdm

    key = run_key(benchmark, method, questions, answerer.identity())
    path = Path(output_dir) / "predictions" / f"{key}.jsonl"
    done = read_done(path, key, {q["id"] for q in questions})
    todo = [q for q in questions if q["id"] not in done]
    if done:
        log.info("%s: %d of %d questions already answered by a run of the same settings", path, len(done),
                 len(questions))
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        step: Callable = answerer.choose if method == "logits" else answerer.generate
        bar = tqdm(total=len(todo), desc=f"{benchmark} {method}", unit="q", dynamic_ncols=True)
        with path.open("a", encoding="utf-8") as sink:
            for start in range(0, len(todo), batch_size * 4):  # a few batches a write: resumable, not chatty
                chunk = todo[start:start + batch_size * 4]
                for q, text in zip(chunk, step(chunk)):
                    line = {**{k: q[k] for k in KEEP if k in q}, "prediction": text, "_key": key}
                    sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                    done[q["id"]] = line
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(len(chunk))
        bar.close()
    records = [done[q["id"]] for q in questions]
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))  # question order
    return records, path

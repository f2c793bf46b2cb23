"""Answer extraction and exact match, shared by the default run, generate.py and evaluation."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"(?:Answer|答案)\s*[:：]\s*(.*)")


def extract_answer(text: str) -> str:
    """The text after the last 'Answer:' / '答案：' marker on its line, else the whole text, stripped."""
    found = _ANSWER.findall(text)
    return (found[-1] if found else text).strip()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions whose extracted answer equals the reference's."""
    if not references:
        return 0.0
    hits = sum(extract_answer(p) == extract_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)


def score_exact_match(model, tokenizer, template, records: list[dict], max_new_tokens: int = 128,
                      batch_size: int = 32) -> tuple[float, list[str]]:
    """Greedy answers of `model` to held-out records, and their exact-match accuracy."""
    from unitune.generation import generate_batch

    prompts = [template.prompt_for(r["instruction"], r["input"], r["history"], r["system"]) for r in records]
    predictions = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, stops=template.stop)
    return exact_match(predictions, [r["output"] for r in records]), predictions

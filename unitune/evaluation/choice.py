"""Reading the chosen option letters out of a model's answer.

- MMCU (its repository's rule): drop `、 . , ; ，`, then the first run of 1-4 letters from A-D in which no
  letter repeats is the answer; it is right only when it equals the answer string (`ABD` included).
- C-Eval / CMMLU generate mode: one letter, found by the cascade of patterns CMMLU's evaluation uses
  (`答案是B`, `选C`, `B项正确`, ..., then a reply that mentions exactly one letter). What no pattern finds is
  unparsed: it counts as wrong and is reported, never replaced by a random choice.
"""

from __future__ import annotations

import re

LETTERS = "ABCD"
_MMCU_DROP = re.compile(r"[、.,;，]")
# Felixgithub2017/MMCU TestBloomz.py find_valid_substrings: re.findall(r'[ABCD]{1,4}') (so `ABCDA` yields
# `ABCD` then `A`), keep those without a repeated letter, take the first
_MMCU_RUN = re.compile(r"[ABCD]{1,4}")
# the same file's label clean-up: spaces, ideographic spaces and commas out, full-width letters to ASCII
_MMCU_LABEL = str.maketrans({" ": None, "\u3000": None, ",": None, "Ａ": "A", "Ｂ": "B", "Ｃ": "C", "Ｄ": "D"})


def mmcu_extract(text: str | None) -> str | None:
    """The letters an MMCU answer chose, or None when there are none."""
    if not text:
        return None
    for run in _MMCU_RUN.findall(_MMCU_DROP.sub("", text)):
        if len(set(run)) == len(run):
            return run
    return None


def mmcu_answer(answer: str | None) -> str:
    """The reference letters as MMCU's harness compares them (`Ａ Ｃ` is `AC`; a stray line break is no part)."""
    return (answer or "").translate(_MMCU_LABEL).strip()


# (pattern, group) pairs tried in order; the first match wins
_SINGLE = [
    (r"答案(选项)?(是|为)：? ?([ABCD])", 3),
    (r"答案(是|为)选项 ?([ABCD])", 2),
    (r"故?选择?：? ?([ABCD])", 1),
    (r"([ABCD]) ?选?项(是|为)?正确", 1),
    (r"正确的?选项(是|为) ?([ABCD])", 2),
    (r"答案(应该)?(是|为)([ABCD])", 3),
    (r"选项 ?([ABCD]) ?(是|为)?正确", 1),
    (r"选择答案 ?([ABCD])", 1),
    (r"答案?[:：]?\s?([ABCD])", 1),
    (r"([ABCD])(选?项)?是?符合题意", 1),
    (r"答案选项：? ?([ABCD])", 1),
    (r"答案(选项)?为(.*?)([ABCD])", 3),
    (r"(?i:answer)\s*(is|:)?\s*\(?([ABCD])\b", 2),
]
_LAST_OF = [r"([ABCD])(.*?)当选", r"([ABCD])(.*?)正确"]  # the last letter before the marker
_WEAK = [(r"[^不]是：? ?([ABCD])", 1)]
_ONLY_ONE = re.compile(r"^[^ABCD]*([ABCD])[^ABCD]*$", re.DOTALL)


def choice_extract(text: str | None) -> str | None:
    """The one letter a C-Eval / CMMLU answer chose, or None when it cannot be read."""
    if not text:
        return None
    text = text.strip()
    if text[:1] in LETTERS and (len(text) == 1 or not text[1].isalpha()):
        return text[0]
    for pattern, group in _SINGLE:
        found = re.search(pattern, text, re.MULTILINE)
        if found:
            return found.group(group)
    for pattern in _LAST_OF:
        found = re.search(pattern, text, re.MULTILINE)
        answer = None
        while found:
            answer = found.group(1)
            found = re.search(pattern, found.group(0)[1:], re.MULTILINE)
        if answer:
            return answer
    for pattern, group in _WEAK:
        found = re.search(pattern, text, re.MULTILINE)
        if found:
            return found.group(group)
    only = _ONLY_ONE.match(text)
    return only.group(1) if only else None

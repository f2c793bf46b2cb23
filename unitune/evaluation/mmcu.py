"""MMCU (Felixgithub2017/MMCU): medicine, law, psychology and education multiple choice, some questions with
several right letters.

Data (`--data_dir`): the official layout, `test/<subject>.xlsx` and `dev/<subject>.xlsx` (medicine: one
workbook `医疗.xlsx` with a sheet per subject; columns by position, see read_dir), or Alpaca-CoT's JSON
(`[{类别, 题目, 选项, 答案}]`, one file per subject). The domain of a subject
follows the official file names: medicine subjects end in `题`, `教育_<subject>` are education, `法律` law and
`心理` psychology (a workbook or JSON file elsewhere is placed by its name containing 医/法/心理/教育).

Score (the published convention): accuracy per subject, the mean over subjects within each domain, then the
mean of the four domains.
"""

from __future__ import annotations

import json
from pathlib import Path

from unitune.errors import UnituneError
from unitune.evaluation.choice import mmcu_answer, mmcu_extract
from unitune.evaluation.records import group_accuracy, mean, where
from unitune.paths import asset

FIELDS = ("prediction", "answer", "subject", "domain")
METHODS = ("generate",)
DOMAINS = ("medicine", "law", "psychology", "education")
DISPLAY = {"scale": 1, "digits": 3}


def definition() -> dict:
    return json.loads(asset("eval", "mmcu/benchmark.json").read_text(encoding="utf-8"))


def domain_of(name: str) -> str | None:
    """The domain of a subject (or file / sheet) name as MMCU names them."""
    if name in DOMAINS:
        return name
    if name.startswith("教育") or "education" in name.lower():
        return "education"
    if name.startswith("法律") or "law" in name.lower():
        return "law"
    if name.startswith("心理") or "psycholog" in name.lower():
        return "psychology"
    if name.endswith("题") or "医" in name or "medic" in name.lower():
        return "medicine"
    return None


def build_prompt(question: str, options: list[str], shots: list[dict] = ()) -> str:
    spec = definition()
    # a shot ends `正确答案的序号是： {answer}\n\n` (format_example's include_answer, with its space)
    body = "".join(spec["question"].format(question=s["question"], options="\n".join(s["options"])) + " "
                   + s["answer"] + "\n\n" for s in shots)
    return spec["instruction"] + body + spec["question"].format(question=question, options="\n".join(options))


# ---------------------------------------------------------------- reading the data
def _json_items(path: Path) -> list[dict]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnituneError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(raw, list):
        raise UnituneError(f"{path}: expected a JSON array of {{类别, 题目, 选项, 答案}}")
    items = []
    for i, rec in enumerate(raw):
        for name in ("题目", "选项", "答案"):
            if not isinstance(rec, dict) or name not in rec:
                raise UnituneError(f"{path}: record {i}: field '{name}' is missing")
        options = rec["选项"]
        options = options if isinstance(options, list) else str(options).splitlines()
        items.append({"question": str(rec["题目"]), "options": [str(o) for o in options],
                      "answer": str(rec["答案"]).strip(), "subject": str(rec.get("类别") or path.stem)})
    return items


# The official layout, as the harness in Felixgithub2017/MMCU (TestChatGLM.py / TestBloomz.py main and
# format_example) reads it: `<data_dir>/test/<subject>.xlsx` and `<data_dir>/dev/<subject>.xlsx`; the
# medicine workbook `医疗.xlsx` holds one sheet per subject (`传染病学339题`, ...) and its dev shots come from
# the first sheet of `dev/医疗.xlsx`; every other workbook is read from its first sheet. Columns are read by
# position under a header row whose names the harness never uses: the question first, the answer last, the
# options between (at most four, lettered A-D).
MULTI_SHEET = "医疗"
_OPTION_MARKS = [" ．", "A、", "B、", "C、", "D、", "A.", "B.", "C.", "D.", "A", "B", "C", "D", "Ａ、", "Ｂ、", "Ｃ、",
                 "Ｄ、"]


def option_text(cell) -> str:
    """An option cell as format_example prints it: its letter marks removed, in the harness's order (which also
    drops every bare A-D inside the text, as the published prompts did); a non-text cell is printed as is."""
    if not isinstance(cell, str):
        return str(cell)
    for mark in _OPTION_MARKS:
        cell = cell.replace(mark, "")
    return cell.strip()


def _sheet_items(path: Path, sheet, subject: str) -> list[dict]:
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    rows = [r for r in rows if any(c not in (None, "") for c in r)][1:]  # the header row (pandas header=0)
    width = max((max((i for i, c in enumerate(r) if c not in (None, "")), default=-1) + 1 for r in rows), default=0)
    if rows and not 3 <= width <= 6:
        raise UnituneError(f"{path}: sheet '{sheet.title}': {width} columns; an MMCU sheet has the question, "
                           f"2-4 options and the answer, in that order")
    items = []
    for lineno, row in enumerate(rows, start=2):
        row = row + [None] * (width - len(row))
        if row[0] in (None, "") or row[width - 1] in (None, ""):
            raise UnituneError(f"{path}: sheet '{sheet.title}': row {lineno}: the question (first column) or the "
                               f"answer (last column) is empty")
        # an empty option cell is left out (the harness would print pandas' `nan` for it)
        options = [f"{x}. {option_text(c)}" for x, c in zip("ABCD", row[1:width - 1]) if c not in (None, "")]
        items.append({"question": str(row[0]), "options": options, "answer": mmcu_answer(str(row[width - 1])),
                      "subject": subject})
    return items


def _xlsx_items(path: Path, first_sheet_only: bool = False) -> list[dict]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several kinds for a file that is not a workbook
        raise UnituneError(f"{path}: not an xlsx workbook ({err})") from None
    if path.stem == MULTI_SHEET and not first_sheet_only:
        return [item for sheet in book.worksheets for item in _sheet_items(path, sheet, sheet.title)]
    return _sheet_items(path, book.worksheets[0], path.stem)


def read_dir(data_dir: Path, dev: bool = False) -> list[dict]:
    """Every question of a folder of MMCU xlsx workbooks and / or Alpaca-CoT JSON files (`<data_dir>/test`
    where it exists). Each item also names its `file` (the stem dev shots are matched by)."""
    if not data_dir.is_dir():
        raise UnituneError(f"--data_dir {data_dir}: no such folder (MMCU xlsx or Alpaca-CoT JSON files)")
    folder = data_dir / "test" if (data_dir / "test").is_dir() and not dev else data_dir
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".xlsx", ".json"))
    if not files:
        raise UnituneError(f"--data_dir {data_dir}: no .xlsx or .json files in {folder}")
    items: list[dict] = []
    for path in files:
        found = _json_items(path) if path.suffix.lower() == ".json" else _xlsx_items(path, first_sheet_only=dev)
        for item in found:
            item["file"] = path.stem
            item["domain"] = domain_of(item["subject"]) or domain_of(path.stem)
            if item["domain"] is None:
                raise UnituneError(f"{path}: subject '{item['subject']}': cannot tell its domain "
                                   f"({', '.join(DOMAINS)}) from the name")
        items += found
    return items


def check(opts) -> None:
    if opts.predictions is None and opts.data_dir is None:
        raise UnituneError("mmcu: give --data_dir (the MMCU test files) or --predictions FILE")


def questions(opts) -> list[dict]:
    items = read_dir(Path(opts.data_dir))
    shots: dict[str, list[dict]] = {}
    if opts.n_shot:
        dev = Path(opts.data_dir) / "dev"
        if not dev.is_dir():
            raise UnituneError(f"--n_shot {opts.n_shot}: {dev} (the dev questions shots are taken from) is missing")
        for item in read_dir(dev, dev=True):  # the harness: dev/<file>.xlsx, first sheet, first n rows
            shots.setdefault(item["file"], []).append(item)
    out = []
    for i, item in enumerate(items):
        prompt = build_prompt(item["question"], item["options"], shots.get(item["file"], [])[: opts.n_shot])
        out.append({"id": f"mmcu-{i}", "prompt": prompt, "answer": item["answer"], "subject": item["subject"],
                    "domain": item["domain"]})
    return out


def published_records(results_dir: str | Path) -> list[dict]:
    """The MMCU repository's per-question result files of one model (`<model>/zero_shot/<subject>`, a line
    `prediction|||answer|||correct` a question, a reference may carry a line break, a closing `Average
    accuracy ...` line that is not a question) as predictions records."""
    import re

    line = re.compile(r"(.*?)\|\|\|(.*?)\|\|\|(True|False)\n", re.DOTALL)
    folder = Path(results_dir)
    folder = folder / "zero_shot" if (folder / "zero_shot").is_dir() else folder
    if not folder.is_dir():
        raise UnituneError(f"{folder}: no such folder of MMCU result files")
    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        domain = domain_of(path.name)
        if domain is None:
            raise UnituneError(f"{path}: cannot tell the MMCU domain from the file name")
        out += [{"prediction": pred, "answer": answer, "subject": path.name, "domain": domain}
                for pred, answer, _ in line.findall(path.read_text(encoding="utf-8"))]
    return out


# ---------------------------------------------------------------- scoring
def score(records: list[dict], opts=None, path=None) -> dict:
    graded = []
    for rec in records:
        if rec["domain"] not in DOMAINS:
            raise UnituneError(f"{where(rec, path)}: field 'domain' is {rec['domain']!r}; expected one of "
                               f"{', '.join(DOMAINS)}")
        letters = mmcu_extract(rec["prediction"])
        graded.append((rec["domain"], rec["subject"], letters == mmcu_answer(rec["answer"]), letters is None))
    subjects = group_accuracy([(s, ok, bad) for _, s, ok, bad in graded])
    domain_of_subject = {s: d for d, s, _, _ in graded}
    domains: dict[str, dict] = {}
    for domain in DOMAINS:
        members = [s for s, d in domain_of_subject.items() if d == domain]
        if members:
            domains[domain] = {"score": mean([subjects[s]["accuracy"] for s in members]), "subjects": len(members),
                               "n": sum(subjects[s]["n"] for s in members),
                               "unparsed": sum(subjects[s]["unparsed"] for s in members)}
    missing = [d for d in DOMAINS if d not in domains]
    return {"benchmark": "mmcu", "headline": "average", "overall": mean([d["score"] for d in domains.values()]),
            "n": len(graded), "unparsed": sum(bad for *_, bad in graded), "unparsed_label": "unparsed",
            "breakdown": {"domain": domains,
                          "subject": {s: {"score": e["accuracy"], "n": e["n"], "unparsed": e["unparsed"],
                                          "domain": domain_of_subject[s]} for s, e in subjects.items()}},
            "domains_missing": missing, "display": DISPLAY}

"""MMCU (Felixgithub2017/MMCU): medicine, law, psychology and education multiple choice, some questions with
several right letters.

Data (`--data_dir`): the official layout, one xlsx per subject (medicine: one workbook with a sheet per
subject), or Alpaca-CoT's JSON (`[{类别, 题目, 选项, 答案}]`, one file per subject). The domain of a subject
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
    body = "".join(spec["question"].format(question=s["question"], options="\n".join(s["options"])) + s["answer"]
                   + "\n\n" for s in shots)
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


def _sheet_items(path: Path, sheet) -> list[dict]:
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    rows = [r for r in rows if any(c not in (None, "") for c in r)]
    if not rows:
        return []
    header = [str(c or "").strip() for c in rows[0]]
    q = next((i for i, h in enumerate(header) if "题" in h or h.lower() == "question"), None)
    a = next((i for i, h in enumerate(header) if "答案" in h or h.lower() == "answer"), None)
    letters = [next((i for i, h in enumerate(header) if h.upper().strip(".、") == x), None) for x in "ABCD"]
    if q is None or a is None or None in letters:
        raise UnituneError(f"{path}: sheet '{sheet.title}': expected columns 题目, A, B, C, D and 答案, "
                           f"found {', '.join(h for h in header if h)}")
    items = []
    for row in rows[1:]:
        options = [f"{x}. {row[i]}" for x, i in zip("ABCD", letters) if i < len(row) and row[i] not in (None, "")]
        items.append({"question": str(row[q]), "options": options, "answer": str(row[a] or "").strip(),
                      "subject": sheet.title})
    return items


def read_dir(data_dir: Path) -> list[dict]:
    """Every question of a folder of MMCU xlsx workbooks and / or Alpaca-CoT JSON files."""
    if not data_dir.is_dir():
        raise UnituneError(f"--data_dir {data_dir}: no such folder (MMCU xlsx or Alpaca-CoT JSON files)")
    files = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in (".xlsx", ".json"))
    if not files:
        raise UnituneError(f"--data_dir {data_dir}: no .xlsx or .json files")
    items: list[dict] = []
    for path in files:
        if path.suffix.lower() == ".json":
            found = _json_items(path)
        else:
            import openpyxl

            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            found = []
            for sheet in book.worksheets:
                for item in _sheet_items(path, sheet):
                    item["subject"] = sheet.title if len(book.worksheets) > 1 else path.stem
                    found.append(item)
        for item in found:
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
        for item in read_dir(dev):
            shots.setdefault(item["subject"], []).append(item)
    out = []
    for i, item in enumerate(items):
        prompt = build_prompt(item["question"], item["options"], shots.get(item["subject"], [])[: opts.n_shot])
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

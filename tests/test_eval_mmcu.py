"""MMCU: the scorer reproduces the published table of seven models from their published per-question results."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from unitune.evaluation import mmcu
from unitune.evaluation.choice import mmcu_extract

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
RESULTS = SHARED / "mmcu_results"
# the table in ../shared/data/README.md (from the MMCU README): medicine, law, psychology, education, average
PUBLISHED = {
    "bloomz_560m": (0.298, 0.163, 0.201, 0.247, 0.227),
    "bloomz_1b1": (0.213, 0.14, 0.187, 0.275, 0.204),
    "bloomz_3b": (0.374, 0.18, 0.319, 0.315, 0.297),
    "bloomz_7b1_mt": (0.364, 0.174, 0.346, 0.316, 0.300),
    "chatglm6b": (0.338, 0.169, 0.288, 0.333, 0.282),
    "MOSS16B": (0.234, 0.133, 0.211, 0.253, 0.208),
    "gpt3.5turbo": (0.512, 0.239, 0.447, 0.455, 0.413),
}


def convert(model_dir: Path, out: Path) -> int:
    """The published result files of one model as a predictions JSONL file; returns the question count."""
    lines = mmcu.published_records(model_dir)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    return len(lines)


@pytest.mark.skipif(not RESULTS.is_dir(), reason="../shared/data/mmcu_results (published MMCU results) is absent")
def test_reproduces_the_published_table_of_seven_models(tmp_path):
    from unitune.evaluation import run

    dirs = {d.name.split("_test_results")[0]: d for d in RESULTS.iterdir() if d.is_dir()}
    assert set(dirs) == set(PUBLISHED)
    for model, published in PUBLISHED.items():
        preds = tmp_path / f"{model}.jsonl"
        assert convert(dirs[model], preds) > 10000
        run(["mmcu", "--predictions", str(preds), "--output_dir", str(tmp_path / model)])
        result = json.loads((tmp_path / model / "result.json").read_text(encoding="utf-8"))
        domains = result["breakdown"]["domain"]
        assert domains["medicine"]["subjects"] == 15 and domains["education"]["subjects"] == 8
        got = tuple(domains[d]["score"] for d in mmcu.DOMAINS) + (result["overall"],)
        for name, want, have in zip((*mmcu.DOMAINS, "average"), published, got):
            assert abs(have - want) <= 0.001, f"{model} {name}: {have:.4f} published {want}"
        assert (tmp_path / model / "result.md").read_text(encoding="utf-8").count("|") > 100
        assert (tmp_path / model / "result.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("text, letters", [
    ("B", "B"), ("ABD", "ABD"), ("A、B、D", "ABD"), ("A,C", "AC"), ("A.B.D", "ABD"), ("A. B", "A"), ("A；B", "A"),
    ("正确答案的序号是：C", "C"), ("我认为答案是B，因为题干说明了", "B"), ("AAB", None), ("ABCDA", "ABCD"),  # findall([ABCD]{1,4})
    ("AAB 然后 C", "C"), ("未成功回答", None), ("", None), (None, None), ("BACD", "BACD"),
])
def test_mmcu_extraction(text, letters):
    assert mmcu_extract(text) == letters


def test_mmcu_multi_letter_answers_count_only_when_equal():
    records = [
        {"prediction": "ABD", "answer": "ABD", "subject": "s1", "domain": "law"},
        {"prediction": "AB", "answer": "ABD", "subject": "s1", "domain": "law"},
        {"prediction": "BAD", "answer": "ABD", "subject": "s1", "domain": "law"},
        {"prediction": "无法回答", "answer": "A", "subject": "s1", "domain": "law"},
    ]
    result = mmcu.score(records)
    assert result["breakdown"]["subject"]["s1"]["score"] == 0.25
    assert result["unparsed"] == 1


def test_mmcu_means_subjects_then_domains():
    def recs(subject, domain, right, wrong):
        return ([{"prediction": "A", "answer": "A", "subject": subject, "domain": domain}] * right
                + [{"prediction": "B", "answer": "A", "subject": subject, "domain": domain}] * wrong)

    records = (recs("m1", "medicine", 1, 0) + recs("m2", "medicine", 0, 9) + recs("law", "law", 1, 1)
               + recs("psy", "psychology", 0, 1) + recs("e1", "education", 3, 1))
    result = mmcu.score(records)
    domains = result["breakdown"]["domain"]
    assert domains["medicine"]["score"] == 0.5  # (1.0 + 0.0) / 2, not 1 / 10
    assert result["overall"] == pytest.approx((0.5 + 0.5 + 0.0 + 0.75) / 4)


def _book(path, sheets):
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def test_mmcu_reads_the_official_xlsx_layout_and_alpaca_cot_json(tmp_path):
    """The layout MMCU's own harness reads (TestChatGLM.py): test/ and dev/ workbooks, 医疗.xlsx a sheet per
    subject with shots from dev/医疗.xlsx's first sheet, columns by position under an unused header row, option
    letter marks stripped, full-width answers normalized; plus Alpaca-CoT's JSON."""
    head = ["ignored", "x1", "x2", "x3", "x4", "x5"]  # the harness never reads the header's names
    data = tmp_path / "mmcu"
    _book(data / "test" / "医疗.xlsx", {"药理学200题": [head, ["问题二", "A、甲", "B.乙", "丙", "丁", "Ａ C"]],
                                         "解剖学22题": [head, ["问题三", "甲", "乙", "丙", "丁", "D"]]})
    _book(data / "dev" / "医疗.xlsx", {"药理学": [head, ["例题一", "甲", "乙", "丙", "丁", "B"]],
                                        "other": [head, ["不用的例题", "甲", "乙", "丙", "丁", "C"]]})
    _book(data / "test" / "教育_数学.xlsx", {"Sheet1": [["q", "a", "b", "answer"], ["一加一", "2", "3", "A"]]})
    (data / "test" / "法律.json").write_text(json.dumps([{"类别": "法律", "题目": "问题一", "选项": ["A. 甲", "B. 乙"],
                                                          "答案": "B"}], ensure_ascii=False), encoding="utf-8")
    items = mmcu.read_dir(data)
    assert [(i["subject"], i["domain"], i["answer"]) for i in items] == [
        ("药理学200题", "medicine", "AC"), ("解剖学22题", "medicine", "D"), ("教育_数学", "education", "A"),
        ("法律", "law", "B")]
    assert items[0]["options"] == ["A. 甲", "B. 乙", "C. 丙", "D. 丁"] and items[2]["options"] == ["A. 2", "B. 3"]
    opts = SimpleNamespace(data_dir=str(data), n_shot=5)
    prompts = {q["subject"]: q["prompt"] for q in mmcu.questions(opts)}
    instruction = "请阅读以下选择题并给出正确选项，不要解释原因。请只给出答案的序号。\n"
    shot = "例题一\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n正确答案的序号是： B\n\n"
    assert prompts["药理学200题"] == instruction + shot + "问题二\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n正确答案的序号是："
    assert prompts["解剖学22题"].startswith(instruction + shot)  # every medicine sheet: the first dev sheet
    assert "不用的例题" not in "".join(prompts.values())
    assert prompts["教育_数学"] == instruction + "一加一\nA. 2\nB. 3\n正确答案的序号是："  # no dev file: zero-shot


def test_mmcu_xlsx_problems_name_the_file_and_sheet(tmp_path):
    from unitune.errors import UnituneError

    _book(tmp_path / "test" / "法律.xlsx", {"Sheet1": [["q", "a"], ["问题", "A"]]})
    with pytest.raises(UnituneError, match=r"法律.xlsx: sheet 'Sheet1': 2 columns"):
        mmcu.read_dir(tmp_path)
    _book(tmp_path / "test" / "法律.xlsx", {"Sheet1": [["q", "a", "b", "c"], ["问题", "甲", "乙", "A"],
                                                          ["问题", "甲", "乙", None]]})
    with pytest.raises(UnituneError, match=r"法律.xlsx: sheet 'Sheet1': row 3: .*answer"):
        mmcu.read_dir(tmp_path)


def test_mmcu_bad_predictions_name_file_line_and_field(tmp_path):
    from unitune.errors import UnituneError
    from unitune.evaluation import run

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prediction": "A", "answer": "A", "subject": "s"}\n', encoding="utf-8")
    with pytest.raises(UnituneError, match=r"p.jsonl: line 1: field 'domain' is missing"):
        run(["mmcu", "--predictions", str(bad), "--output_dir", str(tmp_path / "out")])
    bad.write_text('{"prediction": "A", "answer": "A", "subject": "s", "domain": "history"}\n', encoding="utf-8")
    with pytest.raises(UnituneError, match=r"line 1: field 'domain' is 'history'"):
        run(["mmcu", "--predictions", str(bad), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written for bad input

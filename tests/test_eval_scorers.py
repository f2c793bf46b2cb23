"""Hand-made cases for the scorers: extraction F1, option-letter extraction, averaging, reports and compare."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from unitune.errors import UnituneError
from unitune.evaluation import ie, mcq, run
from unitune.evaluation.choice import choice_extract


# ---------------------------------------------------------------- extraction F1
@pytest.mark.parametrize("text, tuples", [
    ("(写生随笔,作者,张来亮)", {("写生随笔", "作者", "张来亮")}),
    ("（写生随笔， 作者 ，张来亮）", {("写生随笔", "作者", "张来亮")}),
    ("Head: A\nAnswer: (Mira  Vale, works for, Moonrise Bank)", {("mira vale", "works for", "moonrise bank")}),
    ("主体：周思远\n答案：(周思远, 出生于, 石桥镇)；(何超、认识、李梓萱)",
     {("周思远", "出生于", "石桥镇"), ("何超", "认识", "李梓萱")}),
    ("(a, b, c) (a,b,c)", {("a", "b", "c")}),  # a set: a repeat is one tuple
    ("答案：无", set()),
    ("I think the triple is Mira Vale working somewhere", None),  # prose without a tuple: a parse failure
    ("", None),
])
def test_parse_tuples(text, tuples):
    assert ie.parse_tuples(text) == tuples


def test_entity_lists_without_brackets():
    assert ie.parse_tuples("北京；上海, 广州", bracketed=False) == {("北京",), ("上海",), ("广州",)}


def test_micro_f1_by_hand():
    records = [
        {"prediction": "(a,r,b)；(c,r,d)", "answer": "(a,r,b)"},           # tp 1, pred 2, gold 1
        {"prediction": "(x,r,y)", "answer": "(x, r, y)；(u,r,v)"},          # tp 1, pred 1, gold 2
        {"prediction": "no idea", "answer": "(p,r,q)"},                     # parse failure: pred 0, gold 1
    ]
    result = ie.score(records)
    precision, recall = 2 / 3, 2 / 4
    assert result["breakdown"]["metric"]["precision"]["score"] == pytest.approx(precision)
    assert result["breakdown"]["metric"]["recall"]["score"] == pytest.approx(recall)
    assert result["overall"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert result["unparsed"] == 1 and result["counts"] == {"true_positives": 2, "predicted": 3, "gold": 4}


def test_f1_with_nothing_predicted_is_zero_not_nan():
    result = ie.score([{"prediction": "无", "answer": "(a,b,c)"}])
    assert result["overall"] == 0.0 and result["unparsed"] == 0


def test_a_reference_without_tuples_is_refused(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prediction": "(a,b,c)", "answer": "(a,b,c)"}\n{"prediction": "x", "answer": "答案："}\n',
                   encoding="utf-8")
    with pytest.raises(UnituneError, match=r"p.jsonl: line 2: field 'answer' holds no tuples"):
        run(["ie", "--predictions", str(bad), "--output_dir", str(tmp_path / "out")])


def test_ie_questions_are_the_extraction_records_of_the_embedded_set():
    questions = ie.questions(SimpleNamespace(data=None))
    assert len(questions) > 20
    assert all(ie.is_bracketed(q["answer"]) and q["input"] for q in questions)


# ---------------------------------------------------------------- C-Eval / CMMLU letters
@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("C. 大腿", "C"), ("答案是D", "D"), ("答案：A", "A"), ("正确答案是：B。", "B"),
    ("根据题意，我们可以排除A和B，故选C。", "C"), ("选项D正确，因为……", "D"), ("A项正确", "A"),
    ("The answer is B.", "B"), ("我不知道", None), ("", None), ("A和B都有可能", None),
])
def test_choice_extraction(text, letter):
    assert choice_extract(text) == letter


def _opts(name):
    return SimpleNamespace(benchmark=name)


def test_cmmlu_category_and_overall_count_questions():
    records = ([{"prediction": "A", "answer": "A", "subject": "ancient_chinese"}] * 3   # Social Science + China
               + [{"prediction": "B", "answer": "A", "subject": "astronomy"}]         # STEM
               + [{"prediction": "不会", "answer": "A", "subject": "astronomy"}])
    result = mcq.score(records, _opts("cmmlu"))
    categories = result["breakdown"]["category"]
    assert categories["Social Science"]["score"] == 1.0 and categories["China specific"]["score"] == 1.0
    assert categories["STEM"] == {"score": 0.0, "n": 2, "unparsed": 1, "subjects": 1}
    assert "Humanities" not in categories  # no question: no row, never a NaN
    assert result["overall"] == pytest.approx(3 / 5) and result["unparsed"] == 1


def test_published_subject_maps():
    cmmlu, ceval = mcq.definition("cmmlu"), mcq.definition("ceval")
    assert len(cmmlu["subjects"]) == 67 and len(cmmlu["categories"]) == 5
    assert len(ceval["subjects"]) == 52 and len(ceval["categories"]) == 4
    assert {c for s in ceval["subjects"].values() for c in s["categories"]} == set(ceval["categories"])
    assert {c for s in cmmlu["subjects"].values() for c in s["categories"]} == set(cmmlu["categories"])


def test_ceval_csv_layout_and_prompt(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "dev").mkdir()
    head = "id,question,A,B,C,D,answer,explanation\n"
    (tmp_path / "val" / "law_val.csv").write_text(head + "0,问一,甲,乙,丙,丁,B,\n1,问二,甲,乙,丙,丁,C,\n",
                                                 encoding="utf-8")
    (tmp_path / "dev" / "law_dev.csv").write_text(head + "0,例题,甲,乙,丙,丁,A,因为\n", encoding="utf-8")
    opts = SimpleNamespace(benchmark="ceval", data_dir=str(tmp_path), split="val", n_shot=1, subjects=None)
    questions = mcq.questions(opts)
    assert [q["answer"] for q in questions] == ["B", "C"]
    assert questions[0]["prompt"] == ("以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n"
                                      "例题\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：A\n\n问一\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：")


def test_unknown_subject_file_is_named(tmp_path):
    (tmp_path / "nonsense.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(UnituneError, match=r"nonsense.csv: 'nonsense' is not a cmmlu subject"):
        run(["cmmlu", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])


# ---------------------------------------------------------------- reports and compare
def _write(path, lines):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")


def test_result_files_and_compare(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, [{"prediction": "A", "answer": "A", "subject": "arts"}, {"prediction": "B", "answer": "A",
                                                                        "subject": "genetics"}])
    _write(b, [{"prediction": "A", "answer": "A", "subject": "arts"}, {"prediction": "A", "answer": "A",
                                                                        "subject": "genetics"}])
    run(["cmmlu", "--predictions", str(a), "--output_dir", str(tmp_path / "ra"), "--label", "base"])
    run(["cmmlu", "--predictions", str(b), "--output_dir", str(tmp_path / "rb"), "--label", "tuned"])
    result = json.loads((tmp_path / "ra" / "result.json").read_text(encoding="utf-8"))
    assert result["overall"] == 0.5 and result["label"] == "base"
    assert set(result["breakdown"]) == {"category", "subject"}
    assert "| Humanities | 100.00 | 1 | 0 |" in (tmp_path / "ra" / "result.md").read_text(encoding="utf-8")
    table = run(["compare", str(tmp_path / "ra" / "result.json"), str(tmp_path / "rb" / "result.json"),
                 "--output_dir", str(tmp_path / "cmp")])
    assert table.splitlines()[0] == "| cmmlu | base | tuned |"
    assert "| average | 50.00 | 100.00 |" in table and "| STEM | 0.00 | 100.00 |" in table
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob(".*.tmp*")) and not [p for p in tmp_path.rglob(".result*")]


def test_compare_refuses_mixed_benchmarks(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, [{"prediction": "A", "answer": "A", "subject": "arts"}])
    _write(b, [{"prediction": "(a,b,c)", "answer": "(a,b,c)"}])
    run(["cmmlu", "--predictions", str(a), "--output_dir", str(tmp_path / "ra")])
    run(["ie", "--predictions", str(b), "--output_dir", str(tmp_path / "rb")])
    with pytest.raises(UnituneError, match="different benchmarks"):
        run(["compare", str(tmp_path / "ra" / "result.json"), str(tmp_path / "rb" / "result.json")])


def test_bad_flags_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(UnituneError, match="unknown benchmark 'mmlu'"):
        run(["mmlu"])
    with pytest.raises(UnituneError, match="--predictions .*: no such file"):
        run(["ie", "--predictions", str(tmp_path / "none.jsonl")])
    (tmp_path / "x.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(UnituneError, match=r"x.jsonl: line 1: not JSON"):
        run(["ie", "--predictions", str(tmp_path / "x.jsonl")])
    with pytest.raises(UnituneError, match="--method logits: ie is scored by generate"):
        run(["ie", "--method", "logits", "--predictions", str(tmp_path / "x.jsonl")])


def test_cot_ablation_strips_rationales_to_the_answer_line():
    from bench.cot_ablation import strip_rationale

    assert strip_rationale("Head: A\nRelation: r\nTail: B\nAnswer: (A, r, B)") == "Answer: (A, r, B)"
    assert strip_rationale("先算 3+4=7。\n再乘 2 得 14。\n答案：14") == "答案：14"
    assert strip_rationale("no marker here") == "no marker here"


def test_ceval_and_mmcu_generating_runs_on_a_tiny_model(tmp_path, tiny_model):
    """Whole runs from data files through a local model: C-Eval by logits and by generation, MMCU from xlsx."""
    import openpyxl

    model = str(tiny_model("llama"))
    head = "id,question,A,B,C,D,answer,explanation\n"
    (tmp_path / "ceval" / "val").mkdir(parents=True)
    (tmp_path / "ceval" / "val" / "logic_val.csv").write_text(
        head + "".join(f"{i},问题{i},甲,乙,丙,丁,{'ABCD'[i % 4]},\n" for i in range(6)), encoding="utf-8")
    for method in ("logits", "generate"):
        result = run(["ceval", "--method", method, "--data_dir", str(tmp_path / "ceval"), "--model_name_or_path",
                      model, "--max_new_tokens", "4", "--output_dir", str(tmp_path / method)])
        assert result["n"] == 6 and list(result["breakdown"]["category"]) == ["Humanities"]
        assert 0.0 <= result["overall"] <= 1.0
    assert result["unparsed"] <= 6  # generate: counted, never guessed
    (tmp_path / "mmcu").mkdir()
    book = openpyxl.Workbook()
    book.active.title = "法律"
    book.active.append(["题目", "A", "B", "C", "D", "正确答案"])
    for i in range(3):
        book.active.append([f"问题{i}", "甲", "乙", "丙", "丁", "AB"])
    book.save(tmp_path / "mmcu" / "法律.xlsx")
    result = run(["mmcu", "--data_dir", str(tmp_path / "mmcu"), "--model_name_or_path", model,
                  "--max_new_tokens", "4", "--output_dir", str(tmp_path / "mmcu-out")])
    assert result["n"] == 3 and list(result["breakdown"]["domain"]) == ["law"]
    assert result["domains_missing"] == ["medicine", "psychology", "education"]


def test_a_failed_run_leaves_no_older_result(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    _write(good, [{"prediction": "(a,b,c)", "answer": "(a,b,c)"}])
    _write(bad, [{"prediction": "(a,b,c)", "answer": "(a,b,c)"}, {"prediction": "x", "answer": "答案："}])
    run(["ie", "--predictions", str(good), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "result.json").is_file()
    with pytest.raises(UnituneError, match="line 2: field 'answer' holds no tuples"):
        run(["ie", "--predictions", str(bad), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "result.json").exists()

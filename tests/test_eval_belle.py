"""Belle-eval over the real 1,000-question set against a fake judge served on 127.0.0.1 by this test:
canned `得分:` replies, some malformed, some answered 429 or 503 first; the second run is served from the cache."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from unitune.evaluation import belle, run

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
BELLE = SHARED / "belle_eval"
needs_belle = pytest.mark.skipif(not (BELLE / "belle_eval_set.json").is_file(),
                                 reason="../shared/data/belle_eval (the Belle-eval set) is absent")


def canned(i: int, asked_before: int) -> tuple[int, str]:
    """(HTTP status, reply) of the fake judge for question i, asked `asked_before` times already."""
    if i % 10 == 7 and asked_before == 0:
        return 429, ""
    if i % 10 == 9 and asked_before == 0:
        return 503, ""
    if i % 10 == 3:
        return 200, "这个回答还可以，但我不打分。"  # never a score: unscored after the retries
    if i % 13 == 5 and asked_before == 0:
        return 200, "得分 不确定"  # malformed once, scored when asked again
    if i % 17 == 0:
        return 200, "得分: 2\n理由：超出范围的分数被截断为 1。"
    colon = "：" if i % 2 else ":"
    return 200, f"得分{colon}{(i * 7) % 11 / 10}\n理由：与标准回答比较。"


def expected(i: int) -> float | None:
    if i % 10 == 3:
        return None
    return 1.0 if i % 17 == 0 else (i * 7) % 11 / 10


class FakeJudge:
    def __init__(self, questions: list[str]):
        self.index = {q: i for i, q in enumerate(questions)}
        self.asked: dict[int, int] = {}
        self.requests = 0
        self.messages: list[str] = []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][0]["content"]
                i = next(n for q, n in judge.index.items() if f" {q} " in content)
                with judge.lock:
                    judge.requests += 1
                    status, reply = canned(i, judge.asked.get(i, 0))
                    judge.asked[i] = judge.asked.get(i, 0) + 1
                    judge.messages.append(content)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}
                                     if status == 200 else {"error": {"message": "slow down"}}).encode()
                self.send_response(status)
                if status != 200:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def real_set(tmp_path):
    rows = [json.loads(line) for line in (BELLE / "belle_eval_set.json").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": f"q{i}", "question": r["question"], "class": r["class"],
                                         "answer": r["std_answer"], "prediction": f"模型回答第{i}题"},
                                        ensure_ascii=False) + "\n" for i, r in enumerate(rows)), encoding="utf-8")
    return rows, preds


@needs_belle
def test_belle_against_a_fake_judge_then_from_the_cache(tmp_path, real_set):
    rows, preds = real_set
    assert len(rows) == 1000
    judge = FakeJudge([r["question"] for r in rows])
    flags = ["belle", "--predictions", str(preds), "--judge_prompts", str(BELLE / "belle_eval_prompt.json"),
             "--judge_base_url", judge.url, "--judge_model", "fake-judge", "--judge_cache", str(tmp_path / "cache"),
             "--judge_concurrency", "8", "--judge_backoff", "0.01"]
    try:
        result = run([*flags, "--output_dir", str(tmp_path / "r1")])
        first_requests = judge.requests
        again = run([*flags, "--output_dir", str(tmp_path / "r2")])
    finally:
        judge.server.shutdown()
    classes = {belle.normalize_class(r["class"]) for r in rows}
    assert set(result["breakdown"]["class"]) == classes and len(classes) == 10
    assert "closed qa" in classes and "open qa" in classes  # 'closed\xa0qa' and 'open qa' found their prompts
    unscored = sum(expected(i) is None for i in range(1000))
    assert result["unparsed"] == unscored == 100
    for cls, entry in result["breakdown"]["class"].items():
        members = [i for i, r in enumerate(rows) if belle.normalize_class(r["class"]) == cls]
        scores = [expected(i) for i in members if expected(i) is not None]
        assert entry["n"] == len(members) and entry["unparsed"] == len(members) - len(scores)
        assert entry["score"] == pytest.approx(sum(scores) / len(scores))
    class_means = [e["score"] for e in result["breakdown"]["class"].values()]
    assert result["overall"] == pytest.approx(sum(class_means) / len(class_means))
    # every question judged; 429s retried; unscorable replies asked again (1 + --judge_retries 2 times)
    malformed_once = sum(1 for i in range(1000) if i % 13 == 5 and i % 10 not in (3, 7, 9))  # 7, 9: 429 / 503 first
    assert first_requests == 1000 + 100 + 100 + 2 * 100 + malformed_once
    assert judge.requests == first_requests  # the second run: every reply from the cache
    assert again["judge"]["calls"] == 0 and again["overall"] == result["overall"]
    assert again["breakdown"] == result["breakdown"]
    md = (tmp_path / "r1" / "result.md").read_text(encoding="utf-8")
    assert f"**Avg.: {100 * result['overall']:.1f}**" in md and "100 unscored" in md


@needs_belle
def test_belle_message_format(real_set):
    rows, _ = real_set
    prompts = {belle.normalize_class(r["class"]): r["prompt"] for r in map(
        json.loads, (BELLE / "belle_eval_prompt.json").read_text(encoding="utf-8").splitlines())}
    math = next(r for r in rows if r["class"] == "math")
    text = belle.judge_message(prompts["math"], math["question"], math["std_answer"], "42", "math")
    assert text == (f"{prompts['math']} {math['question']} 标准回答：{math['std_answer']} 模型回答：'42'。"
                    f"请针对模型回答给出得分，顺便给出理由：")
    gen = next(r for r in rows if r["class"] == "generation")
    text = belle.judge_message(prompts["generation"], gen["question"], gen["std_answer"], "诗", "generation")
    assert "标准回答" not in text and text.endswith("模型回答：'诗'。请针对模型回答给出得分，顺便给出理由：")


@pytest.mark.parametrize("reply, value", [
    ("得分: 0.8", 0.8), ("得分：1", 1.0), ("得分:0.35 理由：……", 0.35), ("得分: 3", 1.0), ("得分：-1", None),
    ("分数是0.5", None), ("", None), (None, None), ("理由很多。\n得分： 0", 0.0),
])
def test_score_parsing(reply, value):
    assert belle.parse_score(reply) == value


def test_class_names_are_normalized():
    assert belle.normalize_class("closed\xa0qa") == belle.normalize_class("closed QA") == "closed qa"
    assert belle.normalize_class(" Open  QA ") == "open qa"


@needs_belle
def test_belle_generating_run_answers_then_judges(tmp_path):
    """The model under test answers the first questions of the real set (embedded default), the judge scores."""
    rows = [json.loads(line) for line in (BELLE / "belle_eval_set.json").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    judge = FakeJudge([r["question"] for r in rows])
    try:
        result = run(["belle", "--data_dir", str(BELLE), "--max_samples", "6", "--max_new_tokens", "8",
                      "--judge_base_url", judge.url, "--judge_model", "fake-judge", "--judge_backoff", "0.01",
                      "--judge_cache", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")])
    finally:
        judge.server.shutdown()
    assert result["n"] == 6 and result["unparsed"] == sum(expected(i) is None for i in range(6))
    preds = [json.loads(line) for line in Path(result["predictions"]).read_text(encoding="utf-8").splitlines()]
    assert [p["question"] for p in preds] == [r["question"] for r in rows[:6]]
    for p in preds:  # the judge saw each generated answer with its question
        assert any(f" {p['question']} " in m and f"模型回答：'{p['prediction']}'" in m for m in judge.messages)
    judged = (tmp_path / "out" / "judgements.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(judged) == 6

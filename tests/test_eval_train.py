"""uniform_finetune.py --eval_benchmarks: benchmarks on the base and the tuned model, added to results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unitune.errors import UnituneError


def test_fine_tune_then_ie_f1_rises_above_the_base(tmp_path):
    """End to end: the embedded default tuned on its generated data (which holds triple extraction) scores a
    higher extraction F1 on the held-out triples than the untuned base."""
    from unitune.evaluation.ie import is_bracketed
    from unitune.paths import asset
    from unitune.train import run

    lines = asset("data", "synth/train.jsonl").read_text(encoding="utf-8").splitlines()
    extraction = [line for line in lines if is_bracketed(json.loads(line)["output"])]
    assert len(extraction) > 300
    data = tmp_path / "extraction.jsonl"
    data.write_text("\n".join(extraction) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    results = run(["--data", str(data), "--max_steps", "80", "--eval_samples", "0", "--eval_benchmarks", "ie",
                   "--eval_max_new_tokens", "64", "--save_steps", "1000", "--output_dir", str(out)])
    base, tuned = results["base_benchmarks"]["ie"], results["benchmarks"]["ie"]
    assert base["n"] == tuned["n"] > 20
    assert tuned["overall"] > base["overall"] + 0.1, (base, tuned)
    saved = json.loads((out / "results.json").read_text())
    assert saved["benchmarks"]["ie"]["overall"] == tuned["overall"]
    report = json.loads(Path(tuned["result"]).read_text(encoding="utf-8"))
    assert report["benchmark"] == "ie" and report["settings"]["answerer"]["adapter"] is not None
    assert (out / "eval" / "base" / "ie" / "result.png").is_file()


def test_eval_benchmarks_are_checked_before_any_model_loads(tmp_path, monkeypatch):
    import unitune.loader

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(unitune.loader, "load", no_load)
    from unitune.train import run

    with pytest.raises(UnituneError, match="unknown benchmark 'mmlu'"):
        run(["--eval_benchmarks", "mmlu", "--output_dir", str(tmp_path / "a")])
    with pytest.raises(UnituneError, match="--eval_benchmarks cmmlu: no data folder .*cmmlu"):
        run(["--eval_benchmarks", "cmmlu", "--eval_benchmark_dir", str(tmp_path), "--output_dir", str(tmp_path / "b")])
    with pytest.raises(UnituneError, match="--eval_benchmarks belle: needs a judge"):
        run(["--eval_benchmarks", "belle", "--output_dir", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

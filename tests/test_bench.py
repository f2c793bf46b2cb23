"""The benchmarks end to end at their reduced size (--quick): every run measured, one JSON, one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_train_speed_quick_writes_every_run(tmp_path):
    out = tmp_path / "train_speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_speed.py"), "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["matmul_peak_flops"]["fp32"] > 0
    runs = result["runs"]
    assert {"ceiling_fp32", "alpaca_cot_baseline", "unitune_default", "unitune_unpacked_fp32"} <= set(runs)
    for name, run in runs.items():
        assert run["status"] == "ok", (name, run)
        assert run["tokens_per_second"] > 0 and 0 < run["mfu"] < 1 and run["peak_rss_mb"] > 50, (name, run)
    assert runs["ceiling_fp32"]["of_ceiling"] == 1.0
    assert "| unitune_default |" in proc.stdout
    ratio = result["ratios"]["unitune_default / alpaca_cot_baseline"]
    assert ratio == runs["unitune_default"]["tokens_per_second"] / runs["alpaca_cot_baseline"]["tokens_per_second"]
    assert f"unitune_default / alpaca_cot_baseline: {ratio:.2f}" in proc.stdout


def test_serve_speed_quick_measures_batched_and_one_at_a_time_serving(tmp_path):
    """bench/serve_speed.py --quick: both servers, every client count, no broken stream, one JSON, one table."""
    out = tmp_path / "serve_speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "serve_speed.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert set(runs) == {"batched_1", "batched_4", "batched_16", "one_at_a_time_1", "one_at_a_time_16"}
    for name, run in runs.items():
        assert run["status"] == "ok" and run["broken_streams"] == 0, (name, run)
        assert run["completion_tokens"] == run["requests"] * result["workload"]["max_tokens"], (name, run)
        assert run["completion_tokens_per_second"] > 0 and 0 < run["ttft_median_s"] <= run["ttft_max_s"], (name, run)
    assert runs["batched_16"]["largest_batch"] > 1 and runs["one_at_a_time_16"]["largest_batch"] == 1
    assert result["summary"]["speedup_16_clients_batched_vs_one_at_a_time"] > 0
    assert "| batched_16 | 16 |" in proc.stdout


def test_data_speed_quick_measures_cold_cached_and_time_to_training(tmp_path):
    """bench/data_speed.py --quick: unitune's data step cold (tokenized) and cached (a hit), and a cached run's
    seconds to its first training step, in one JSON (LLaMA-Factory's runs need its side venv: --no-peers)."""
    out = tmp_path / "data_speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "data_speed.py"), "--quick", "--no-peers", "--out",
                           str(out), "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert result["workload"]["records"] == 5000
    for name in ("unitune_cold", "unitune_cached", "unitune_cached_to_training"):
        assert runs[name]["status"] == "ok", (name, runs[name])
        assert runs[name]["peak_rss_mb"] >= runs[name]["peak_pss_mb"] > 50, (name, runs[name])
    assert runs["unitune_cold"]["from_cache"] is False and runs["unitune_cached"]["from_cache"] is True
    assert runs["unitune_cold"]["records_per_second"] > 0 and runs["unitune_cold"]["examples"] > 4000
    assert runs["unitune_cached"]["seconds"] < runs["unitune_cold"]["seconds"]
    assert 0 < result["targets"]["cached_seconds_to_training"] < runs["unitune_cached_to_training"]["wall_seconds"]
    assert "| unitune_cold |" in proc.stdout


SHARED_CMMLU = REPO.parent / "shared" / "data" / "cmmlu" / "dev"


def test_eval_logits_speed_quick(tmp_path):
    """bench/eval_logits_speed.py at its reduced size: every path timed, the same letters and logits as one
    question a forward pass (the ratio itself is measured, not asserted: it depends on the machine's load)."""
    import pytest

    if not SHARED_CMMLU.is_dir():
        pytest.skip("../shared/data/cmmlu (CMMLU dev split) is absent")
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "eval_logits_speed.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["questions"] == 12 and all(result["same_letters"].values())
    assert set(result["seconds"]) == {"one at a time", "whole, batched", "shared, single", "shared, batched"}
    assert all(t > 0 for t in result["seconds"].values()) and result["speedup"] > 0
    assert "speed-up of batched scoring over one question at a time" in proc.stdout

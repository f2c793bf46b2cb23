"""bench/train_speed.py end to end at its reduced size: every run measured, one JSON, one table."""

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
    assert {"ceiling_fp32", "alpaca_cot_baseline", "unitune_default", "unitune_packed_fp32"} <= set(runs)
    for name, run in runs.items():
        assert run["status"] == "ok", (name, run)
        assert run["tokens_per_second"] > 0 and 0 < run["mfu"] < 1 and run["peak_rss_mb"] > 50, (name, run)
    assert runs["ceiling_fp32"]["of_ceiling"] == 1.0
    assert "| unitune_default |" in proc.stdout


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

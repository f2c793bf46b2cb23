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

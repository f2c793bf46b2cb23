"""bench/compare_methods.py: every method's real fine-tune, one table, one JSON, one loss plot."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "models" / "unitune-tiny"


def _compare():
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "bench" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_outputs(out: Path, methods: list[str]) -> dict[str, dict]:
    report = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in report["runs"]}
    assert list(rows) == methods
    table = (out / "compare.md").read_text()
    assert all(f"| {m} |" in table for m in methods)
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for row in rows.values():
        if row["status"] == "ok":
            assert math.isfinite(row["final_loss"]) and row["trainable_parameters"] > 0
            assert row["loss_curve"] and row["peak_rss_mb"] > 50 and row["wall_seconds"] > 0
    return rows


def test_two_methods_and_a_failing_one(tiny_model, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Add the numbers.", "input": f"{a} {b}",
                                        "output": f"{a} + {b} = {a + b}. Answer: {a + b}"}) + "\n"
                            for a in range(1, 5) for b in range(1, 5)))
    methods = ["adapter_h", "adapter_p", "lora"]
    out = tmp_path / "compare"
    code = _compare().main(["--methods", *methods, "--max_steps", "3", "--out", str(out),
                            "--model_name_or_path", str(tiny_model("llama")), "--data", str(data),
                            "--cache_dir", str(tmp_path / "cache"), "--per_gpu_train_batch_size", "4",
                            "--lora_target_modules", "nope",  # only lora reads it: lora must fail
                            "--per_method", "adapter_p=--learning_rate 0.01"])
    assert code == 1
    assert "1 of 3 methods failed: lora" in capsys.readouterr().err
    rows = _check_outputs(out, methods)
    assert rows["lora"]["status"] == "failed" and "--lora_target_modules nope" in rows["lora"]["error"]
    assert "failed: --lora_target_modules nope" in (out / "compare.md").read_text()
    assert rows["adapter_h"]["status"] == rows["adapter_p"]["status"] == "ok"
    # Houlsby: after attention and feed-forward, Pfeiffer: after feed-forward only
    assert rows["adapter_h"]["trainable_parameters"] == 2 * rows["adapter_p"]["trainable_parameters"]
    assert [s for s, _ in rows["adapter_p"]["loss_curve"]] == [1, 2, 3]
    # --per_method reached adapter_p only; the table shows each run's resolved learning rate
    assert rows["adapter_p"]["learning_rate"] == 0.01 != rows["adapter_h"]["learning_rate"]
    table = (out / "compare.md").read_text()
    assert "Flags for one method only: adapter_p: --learning_rate 0.01." in table
    assert "| adapter_p | " in table and "| 1e-02 |" in table
    assert (out / "runs" / "adapter_p" / "unitune_adapter.json").is_file()
    assert not list((out / "runs" / "adapter_p").glob("checkpoint-*"))


def test_unknown_method_is_refused(capsys):
    assert _compare().main(["--methods", "lora", "nonesuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown method nonesuch" in err and "adapter_parallel" in err
    assert _compare().main(["--per_method", "full"]) == 2
    assert "expected METHOD=FLAGS" in capsys.readouterr().err
    assert _compare().main(["--per_method", "nonesuch=--learning_rate 1"]) == 2
    assert "unknown method nonesuch" in capsys.readouterr().err


@pytest.mark.skipif(not (EMBEDDED / "config.json").is_file(), reason="embedded default model not built")
def test_every_method_on_the_embedded_default(tmp_path):
    """The README's comparison command on the embedded model and data, shortened to fit the default suite."""
    compare = _compare()
    methods = compare.registered_methods()
    assert {"lora", "qlora", "adalora", "prompt", "p_tuning", "prefix", "adapter_h", "adapter_p",
            "adapter_parallel"} <= set(methods)
    assert compare.main(["--out", str(tmp_path), "--max_steps", "2", "--eval_samples", "4",
                         "--eval_max_new_tokens", "8", "--cache_dir", str(tmp_path / "cache")]) == 0
    rows = _check_outputs(tmp_path, methods)
    counts = {m: r["trainable_parameters"] for m, r in rows.items()}
    assert len(set(counts.values())) >= len(methods) // 2, counts
    assert counts["adapter_h"] == 2 * counts["adapter_p"] and counts["prompt"] < counts["lora"]
    if "full" in counts:
        assert counts["full"] == max(counts.values())

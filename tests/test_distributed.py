"""torchrun on the CPU (gloo): 2 processes train like 1 process with the same global batch, and write once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.serve_speed import free_port

REPO = Path(__file__).resolve().parent.parent
RECORDS = [{"instruction": f"Add {i} and {i * 3 + 1}." + " Think step by step." * (i % 4), "input": "",
            "output": f"{i} + {i * 3 + 1} = {4 * i + 1}. Answer: {4 * i + 1}"} for i in range(16)]


def _train(launcher: list[str], model: Path, data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    argv = [*launcher, str(REPO / "uniform_finetune.py"), "--model_name_or_path", str(model), "--data", str(data),
            "--output_dir", str(out), "--max_steps", "3", "--learning_rate", "1e-2", "--logging_steps", "1",
            "--cutoff_len", "512", "--lora_r", "4", "--lora_dropout", "0", "--eval_base", "false",
            "--cache_dir", str(out.parent / f"cache-{out.name}"), "--seed", "5", "--warmup_ratio", "0",
            "--global_batch_size", "8", "--per_gpu_train_batch_size", "4", *flags]
    return subprocess.run(argv, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_model, tmp_path):
    model = tiny_model("llama")
    data = tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    one = _train([sys.executable], model, data, tmp_path / "one")  # batch 4 x accumulation 2
    two = _train([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port())], model, data,
                 tmp_path / "two")  # 2 processes x batch 4, accumulation 1
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(out: Path) -> list[float]:
        return [h["loss"] for h in map(json.loads, (out / "loss_log.jsonl").read_text().splitlines()) if "loss" in h]

    assert len(losses(tmp_path / "one")) == len(losses(tmp_path / "two")) == 3
    assert all(abs(a - b) < 1e-3 for a, b in zip(losses(tmp_path / "one"), losses(tmp_path / "two")))
    # one adapter, one log, one progress bar, one report: only rank 0 writes and prints
    assert sorted(p.name for p in (tmp_path / "two").glob("adapter_*")) == ["adapter_config.json",
                                                                            "adapter_model.safetensors"]
    assert two.stdout.count("adapter saved to") == 1
    assert two.stderr.count("tokenized data: 16 examples, cached") == 1  # tokenized once, by the main process
    assert two.stderr.count("cache hit") == 1  # the other process read the cache


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_streamed_run_under_torchrun_trains_on_the_stream_like_one_process(tiny_model, tmp_path):
    """--streaming with 2 processes: the stream is read once (the main process reads it and hands each process
    its part of every global batch) and the per-step losses are those of one process with the same global
    batch; one adapter, one log, and no tokenized cache (nothing is read ahead)."""
    model = tiny_model("llama")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 4))
    stream = ["--streaming", "--buffer_size", "8"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    one = _train([sys.executable], model, data, tmp_path / "one", *stream)
    two = _train([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port())], model, data,
                 tmp_path / "two", *stream)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]

    def logged(out: Path) -> list[tuple[float, int]]:
        rows = map(json.loads, (out / "loss_log.jsonl").read_text().splitlines())
        return [(h["loss"], h["num_input_tokens_seen"]) for h in rows if "loss" in h]

    assert len(logged(tmp_path / "one")) == len(logged(tmp_path / "two")) == 3
    for (loss_one, seen_one), (loss_two, seen_two) in zip(logged(tmp_path / "one"), logged(tmp_path / "two")):
        assert abs(loss_one - loss_two) < 1e-3 and seen_one == seen_two
    assert sorted(p.name for p in (tmp_path / "two").glob("adapter_*")) == ["adapter_config.json",
                                                                            "adapter_model.safetensors"]
    assert two.stdout.count("adapter saved to") == 1
    assert not (tmp_path / "cache-two").exists()


def test_deepspeed_and_fsdp_are_refused_on_a_cpu_machine_before_loading(tmp_path, monkeypatch):
    from unitune import train as T
    from unitune.errors import UnituneError

    out = tmp_path / "never"
    with pytest.raises(UnituneError, match=r"--deepspeed shards model states over GPUs and this machine has none"):
        T.run(["--deepspeed", "ds_zero3", "--output_dir", str(out)])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UnituneError, match=r"FSDP \(accelerate config\) shards model states over GPUs"):
        T.run(["--output_dir", str(out)])
    assert not out.exists()


def test_shipped_deepspeed_configs_are_valid_json_with_the_zero_stage_in_their_name():
    from unitune.paths import asset_dir

    configs = {p.stem: json.loads(p.read_text()) for p in asset_dir("configs").glob("ds_*.json")}
    assert set(configs) == {"ds_zero2", "ds_zero3", "ds_zero2_offload", "ds_zero3_offload"}
    for name, config in configs.items():
        assert config["zero_optimization"]["stage"] == int(name[len("ds_zero")])
        assert ("offload_optimizer" in config["zero_optimization"]) == name.endswith("offload")

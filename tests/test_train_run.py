"""A real fine-tune of a tiny llama: a plain-peft adapter dir, replayable config, logs, trackers, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unitune import args as A
from unitune import train as T

RECORDS = [{"instruction": f"Add {i} and {i + 1}.", "input": "",
            "output": f"{i} + {i + 1} = {2 * i + 1}. Answer: {2 * i + 1}"} for i in range(12)]


@pytest.fixture(scope="module")
def tiny_llama(tiny_model) -> Path:
    return tiny_model("llama")  # conftest.py: built once per session, shared, read-only


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    return path


def base_argv(model: Path, data: Path, out: Path, steps: int = 4) -> list[str]:
    return ["--model_name_or_path", str(model), "--data", str(data), "--output_dir", str(out),
            "--max_steps", str(steps), "--per_gpu_train_batch_size", "4", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--save_steps", "2", "--cutoff_len", "128", "--lora_r", "4",
            "--cache_dir", str(out.parent / "cache"), "--seed", "3"]


@pytest.fixture(scope="module")
def trained(tiny_llama, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    argv = base_argv(tiny_llama, data_file, out)
    results = T.run(argv)
    return out, argv, results


def test_adapter_dir_loads_with_plain_peft(trained, tiny_llama):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, results = trained
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]

    tok = AutoTokenizer.from_pretrained(out)  # tokenizer files were saved beside the adapter
    assert tok.eos_token == "</s>" and (out / "tokenizer_config.json").is_file()
    ids = torch.tensor([tok.encode("### Instruction:\nAdd 3 and 4.\n\n### Response:\n")])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out).eval()
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base_logits)
    assert results["trainable_parameters"] == sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n)


def test_loss_log_and_curve(trained):
    out, _, results = trained
    history = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert losses[-1] < losses[0]  # lr 1e-2 on 12 repeated records: the loss falls within 4 steps
    assert results["final_loss"] == losses[-1]
    png = (out / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert json.loads((out / "results.json").read_text())["trainable_parameters"] == results["trainable_parameters"]


def test_config_replays(trained):
    out, argv, _ = trained
    saved = yaml.safe_load((out / "unitune_config.yaml").read_text())
    replayed = A.to_flat_dict(*T.parse(["--config", str(out / "unitune_config.yaml")]))
    for key in ("local_rank", "resume_from_checkpoint"):  # launch-specific, deliberately not saved
        replayed.pop(key)
    assert replayed == saved
    original = A.to_flat_dict(*T.parse(argv))
    assert {k: original[k] for k in saved} == saved
    assert (saved["lora_r"], saved["max_steps"], saved["learning_rate"]) == (4, 4, 1e-2)


def test_checkpoints_kept(trained):
    out, _, _ = trained
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_bare_flag_takes_the_latest_checkpoint(trained, tiny_llama, data_file, tmp_path):
    """Resume from the newest checkpoint: mark its weights, resume, and find the mark in the result."""
    import shutil

    from safetensors.torch import load_file, save_file

    src, _, _ = trained
    out = tmp_path / "out"
    shutil.copytree(src, out)
    ckpt = out / "checkpoint-4" / "adapter_model.safetensors"
    weights = load_file(ckpt)
    marked = {k: (v.fill_(0.5) if "lora_B" in k else v) for k, v in weights.items()}
    save_file(marked, ckpt)
    # an older checkpoint with the same mark would also pass; a different one proves "latest"
    older = out / "checkpoint-2" / "adapter_model.safetensors"
    save_file({k: (v.fill_(-0.5) if "lora_B" in k else v) for k, v in load_file(older).items()}, older)

    argv = base_argv(tiny_llama, data_file, out, steps=6) + ["--learning_rate", "1e-4", "--resume_from_checkpoint"]
    T.run(argv)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    final = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in final.items() if "lora_B" in k]
    # 2 steps at lr 1e-4 move an Adam weight by about 2e-4: still 0.5, nowhere near 0 or -0.5
    assert lora_b and all((v - 0.5).abs().max() < 0.01 for v in lora_b)
    steps = [json.loads(line)["step"] for line in (out / "loss_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the history before the checkpoint came back with it


def test_report_to_tensorboard(tiny_llama, data_file, tmp_path):
    out = tmp_path / "out"
    T.run(base_argv(tiny_llama, data_file, out, steps=2) + ["--report_to", "tensorboard", "--warmup_ratio", "0.5",
                                                             "--lr_scheduler_type", "linear"])
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert len(acc.Scalars("train/loss")) == 2
    # --warmup_ratio is a fraction of the steps: half of 2 steps warms up from 0 to the peak
    rates = [json.loads(line).get("learning_rate") for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert rates[:2] == [0.0, 1e-2]


def test_report_to_wandb_offline(tiny_llama, data_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    T.run(base_argv(tiny_llama, data_file, out, steps=2) + ["--report_to", "wandb"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")) and (out / "adapter_model.safetensors").is_file()
    import wandb

    assert wandb.run is None  # finished, so a later run in this process starts its own


# ---------------------------------------------------------------- issue 10: what a user runs from the command line
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bom_run(tiny_llama, tmp_path_factory):
    """uniform_finetune.py on three files as Windows editors save them (a UTF-8 byte-order mark first):
    (process, output dir)."""
    import csv
    import io

    folder = tmp_path_factory.mktemp("bom")
    rows = RECORDS[:6]
    (folder / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[:2], ensure_ascii=False).encode())
    (folder / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows[2:4]).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["instruction", "input", "output"])
    writer.writeheader()
    writer.writerows(rows[4:6])
    (folder / "c.csv").write_bytes("\ufeff".encode() + text.getvalue().encode())
    out = folder / "out"
    argv = [*base_argv(tiny_llama, folder / "a.json", out, steps=3), "--data", *(str(folder / n) for n in
            ("a.json", "b.jsonl", "c.csv"))]
    return finetune(argv), out


def finetune(argv: list[str]):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "uniform_finetune.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_files_with_a_byte_order_mark_are_read(bom_run):
    proc, out = bom_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "read 6 training records" in proc.stderr
    assert (out / "adapter_model.safetensors").is_file()


def test_progress_bar_shows_the_current_steps_loss(tiny_llama, data_file, tmp_path):
    import re

    out = tmp_path / "out"
    proc = finetune(base_argv(tiny_llama, data_file, out, steps=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = {h["step"]: h["loss"] for h in map(json.loads, (out / "loss_log.jsonl").read_text().splitlines())
              if "loss" in h}
    assert sorted(logged) == [1, 2, 3]
    shown = [(int(step), float(loss)) for step, loss in
             re.findall(r"training:[^\r\n]*?\b(\d+)/3 \[[^\]]*loss=([0-9.]+)", proc.stderr)]
    assert shown, proc.stderr[-2000:]
    for step, loss in shown:  # every time the bar shows a loss, it is the loss of the step it shows
        assert loss == pytest.approx(logged[step], abs=1e-4), (step, loss, logged)
    final = json.loads((out / "results.json").read_text())["final_loss"]
    assert shown[-1] == (3, pytest.approx(final, abs=1e-4))  # it ends on the loss the summary prints

"""Flags: Alpaca-CoT spellings, --config YAML, PEFT presets, derived intervals, an instant --help."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unitune import args as A
from unitune.errors import UnituneError
from unitune.train import interval, parse

REPO = Path(__file__).resolve().parent.parent


def test_alpaca_cot_spellings():
    model, data, peft, train = parse([
        "--model_type", "bloom", "--model_name_or_path", "/models/bloom",
        "--data", "alpaca", "belle.json", "cot.jsonl",
        "--peft_type", "lora", "--lora_target_modules", "query_key_value", "dense",
        "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.1",
        "--per_gpu_train_batch_size", "4", "--gradient_accumulation_steps", "8",
        "--epochs", "2", "--learning_rate", "1e-4", "--cutoff_len", "256", "--val_set_size", "2000",
        "--resume_from_checkpoint", "out/checkpoint-10", "--report_to", "wandb",
        "--quantization_bit", "4", "--compute_dtype", "fp16", "--output_dir", "saved", "--local_rank", "3"])
    assert (model.model_type, model.model_name_or_path) == ("bloom", "/models/bloom")
    assert (model.quantization_bit, model.compute_dtype) == (4, "fp16")
    assert data.data == ["alpaca", "belle.json", "cot.jsonl"]
    assert (data.cutoff_len, data.val_set_size) == (256, 2000)
    assert peft.peft_type == "lora" and peft.lora_target_modules == ["query_key_value", "dense"]
    assert (peft.lora_r, peft.lora_alpha, peft.lora_dropout) == (16, 32, 0.1)
    assert (train.per_gpu_train_batch_size, train.gradient_accumulation_steps) == (4, 8)
    assert (train.epochs, train.learning_rate) == (2, 1e-4)
    assert train.resume_from_checkpoint == "out/checkpoint-10"
    assert (train.report_to, train.output_dir, train.local_rank) == ("wandb", "saved", 3)


def test_more_flags_and_spellings():
    model, data, _, train = parse([
        "--seed", "7", "--max_steps", "30", "--save_steps", "10", "--logging_steps", "2",
        "--lr_scheduler_type", "linear", "--warmup_ratio", "0.1", "--gradient_checkpointing",
        "--template", "alpaca_zh", "--local-rank", "1", "--val_set_size", "0.1"])
    assert (train.seed, train.max_steps, train.save_steps, train.logging_steps) == (7, 30, 10, 2)
    assert (train.lr_scheduler_type, train.warmup_ratio) == ("linear", 0.1)
    assert train.gradient_checkpointing is True and train.local_rank == 1
    assert model.template == "alpaca_zh" and data.val_set_size == 0.1
    assert parse(["--gradient_checkpointing", "false"])[3].gradient_checkpointing is False


def test_resume_bare_flag_means_latest():
    assert parse(["--resume_from_checkpoint"])[3].resume_from_checkpoint == "latest"
    assert parse([])[3].resume_from_checkpoint is None


def test_defaults_and_output_dir():
    model, data, peft, train = parse([])
    assert (model.model_type, peft.peft_type) == ("llama", "lora")
    assert train.output_dir == str(Path("output") / "llama-lora")
    assert parse(["--model_type", "bloom", "--peft_type", "lora"])[3].output_dir == str(Path("output") / "bloom-lora")


def test_config_yaml_and_cli_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model_type": "bloom", "lora_r": 4, "data": ["a.json", "b.json"],
                                   "learning_rate": "5e-5", "gradient_checkpointing": True, "max_steps": 9}))
    model, data, peft, train = parse(["--config", str(cfg)])
    assert model.model_type == "bloom" and peft.lora_r == 4 and data.data == ["a.json", "b.json"]
    assert train.learning_rate == 5e-5 and train.gradient_checkpointing is True and train.max_steps == 9
    model, data, peft, train = parse(["--config", str(cfg), "--lora_r", "32", "--data", "c.json",
                                      "--gradient_checkpointing", "false"])
    assert peft.lora_r == 32 and data.data == ["c.json"] and train.gradient_checkpointing is False
    assert model.model_type == "bloom" and train.max_steps == 9  # untouched YAML values stay


def test_every_preset_applies_and_cli_overrides_it():
    from unitune.methods import preset_names, read_preset

    names = preset_names()
    assert "lora" in names
    for name in names:
        values = {k: v for k, v in read_preset(name).items() if k != "method"}
        # a named model: the embedded default's own tuned flags (tests/test_embedded.py) stay out of this
        merged = A.to_flat_dict(*parse(["--peft_type", name, "--model_name_or_path", "some/model"]))
        for key, value in values.items():
            assert merged[key] == value, f"peft/{name}.yaml {key}"
        assert merged["peft_type"] == name
    lora = read_preset("lora")
    assert (lora["lora_r"], lora["lora_alpha"], lora["lora_dropout"]) == (8, 16, 0.0)
    assert parse(["--peft_type", "lora", "--lora_r", "64"])[2].lora_r == 64


def test_preset_sits_below_config_and_cli(tmp_path, monkeypatch):
    """A preset that differs from the defaults: its values apply, --config overrides them, the CLI overrides both."""
    import unitune.methods as M

    presets = tmp_path / "peft"
    presets.mkdir()
    (presets / "wide.yaml").write_text("method: lora\nlora_r: 64\nlora_alpha: 128\nlora_dropout: 0.2\n")
    monkeypatch.setattr(M, "asset_dir", lambda kind: presets)
    _, _, peft, _ = parse(["--peft_type", "wide"])
    assert (peft.lora_r, peft.lora_alpha, peft.lora_dropout) == (64, 128, 0.2)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lora_alpha: 7\n")
    _, _, peft, _ = parse(["--peft_type", "wide", "--config", str(cfg), "--lora_r", "2"])
    assert (peft.lora_r, peft.lora_alpha, peft.lora_dropout) == (2, 7, 0.2)


@pytest.mark.parametrize("argv,message", [
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
    (["--lora_r", "eight"], "--lora_r"),
    (["--quantization_bit", "3"], "--quantization_bit"),
])
def test_bad_flags_raise_one_line(argv, message):
    with pytest.raises(UnituneError, match=message) as err:
        parse(argv)
    assert "\n" not in str(err.value)


def test_bad_config_key_and_value(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lora_rank: 8\n")
    with pytest.raises(UnituneError, match=r"run\.yaml: unknown flag 'lora_rank'"):
        parse(["--config", str(cfg)])
    cfg.write_text("lora_r: eight\n")
    with pytest.raises(UnituneError, match=r"run\.yaml: lora_r: expected int"):
        parse(["--config", str(cfg)])


def test_intervals_are_never_zero():
    assert interval(None, 1, 50) == 1
    assert interval(None, 3, 5) == 1
    assert interval(None, 49, 50) == 1
    assert interval(None, 1000, 50) == 20
    assert interval(None, 1000, 5) == 200
    assert interval(7, 3, 5) == 7
    for total in range(0, 200):
        assert interval(None, total, 50) >= 1 and interval(None, total, 5) >= 1
    with pytest.raises(UnituneError):
        interval(0, 100, 5)


def test_help_is_instant_and_lists_every_flag():
    best = float("inf")
    for _ in range(2):  # the faster of two: one slow start on a busy machine is not the code's fault
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "uniform_finetune.py", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        best = min(best, time.perf_counter() - started)
        assert proc.returncode == 0, proc.stderr
    assert best < 1.5, f"--help took {best:.2f} s"
    for name in ("--model_type", "--data", "--peft_type", "--lora_target_modules", "--per_gpu_train_batch_size",
                 "--resume_from_checkpoint", "--local-rank", "--config", "--template"):
        assert name in proc.stdout


def test_parse_imports_nothing_heavy():
    code = ("import sys, json; from unitune.train import parse; parse(['--data', 'x.json', '--peft_type', 'lora']); "
            "print(json.dumps([m for m in ('torch', 'transformers', 'peft', 'gradio', 'wandb') if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_a_method_alias_takes_the_method_preset():
    """--peft_type prefix_tuning is prefix: same method, same preset values (not an empty preset)."""
    from unitune.methods import resolve_method

    method, preset = resolve_method("prefix_tuning")
    assert method.name == "prefix" and preset and preset == resolve_method("prefix")[1]

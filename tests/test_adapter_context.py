"""Adapters carry their context: base, model type and template come from the adapter's unitune_config.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from unitune import merge as M  # noqa: E402
from unitune import predict as P  # noqa: E402
from unitune import train as T  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RECORDS = [{"instruction": f"Name the colour number {i}.", "input": "", "output": f"Colour {i}."} for i in range(4)]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A LoRA adapter on a non-default base (tiny qwen2, not the embedded model) with a non-default template."""
    root = tmp_path_factory.mktemp("context")
    data = root / "train.json"
    data.write_text(json.dumps(RECORDS), encoding="utf-8")
    out = root / "adapter"
    T.run(["--model_type", "qwen2", "--model_name_or_path", str(tiny_model("qwen2")), "--template", "vicuna",
           "--data", str(data), "--output_dir", str(out), "--max_steps", "2", "--per_gpu_train_batch_size", "4",
           "--save_steps", "100", "--cutoff_len", "512", "--lora_r", "4", "--cache_dir", str(root / "cache")])
    return out, data


def test_front_ends_read_base_type_and_template_from_the_adapter(trained, tiny_model):
    out, data = trained
    model_args, _, _ = P.parse(["--lora_dir", str(out), "--data", str(data)])
    assert (model_args.model_type, model_args.base_path, model_args.template) == (
        "qwen2", str(tiny_model("qwen2")), "vicuna")
    merge_args, _ = M.parse(["--lora_dir", str(out), "--merged_dir", str(out.parent / "m")])
    assert merge_args.base_path == str(tiny_model("qwen2")) and merge_args.template == "vicuna"
    # flags given win over what the adapter recorded
    model_args, _, _ = P.parse(["--lora_dir", str(out), "--data", str(data), "--template", "alpaca"])
    assert model_args.template == "alpaca" and model_args.model_type == "qwen2"


def test_generate_with_only_lora_dir_loads_that_base_and_template(trained, tiny_model, tmp_path):
    out, data = trained

    def generate(*flags: str) -> list[str]:
        preds = tmp_path / f"preds{len(flags)}.jsonl"
        proc = subprocess.run([sys.executable, "generate.py", "--lora_dir", str(out), "--data", str(data),
                               "--output", str(preds), "--max_new_tokens", "5", *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line)["generate"] for line in preds.read_text().splitlines()]

    implied = generate()
    explicit = generate("--model_type", "qwen2", "--model_name_or_path", str(tiny_model("qwen2")),
                        "--template", "vicuna")
    assert implied == explicit and len(implied) == len(RECORDS)


def test_a_base_that_does_not_fit_is_one_line_naming_both(trained, tiny_model, tmp_path):
    out, data = trained
    from unitune.paths import embedded_base

    other = embedded_base()  # a llama too (same module names), of other shapes
    proc = subprocess.run([sys.executable, "generate.py", "--lora_dir", str(out), "--model_name_or_path", str(other),
                           "--model_type", "llama", "--data", str(data), "--output", str(tmp_path / "p.jsonl")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(out) in errors[0] and str(other) in errors[0] and "does not fit" in errors[0]
    assert str(tiny_model("qwen2")) in errors[0]  # and where it was trained

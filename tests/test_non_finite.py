"""Non-finite numbers stop a run: a NaN tensor is refused at load, a NaN loss stops training without an adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from unitune.args import ModelArgs  # noqa: E402
from unitune.errors import UnituneError  # noqa: E402
from unitune.loader import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# A remote-code model with a persistent buffer, so a checkpoint can carry a NaN in a buffer (the real case is a
# non-persistent buffer refilled with uninitialized memory, which is not reproducible on purpose).
_MODELING = '''
import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class ScaledConfig(PretrainedConfig):
    model_type = "scaled_tiny"

    def __init__(self, vocab_size=400, hidden_size=8, **kw):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kw)


class ScaledForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ScaledConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.register_buffer("scale", torch.ones(config.hidden_size))
        self.post_init()

    def forward(self, input_ids=None, labels=None, **kw):
        return CausalLMOutput(logits=self.head(self.embed(input_ids) * self.scale))
'''


def _nan_buffer_model(tiny_model, out: Path) -> Path:
    import shutil

    from safetensors.torch import save_file

    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model("llama") / name, out / name)
    (out / "modeling_scaled.py").write_text(_MODELING)
    (out / "config.json").write_text(json.dumps({
        "model_type": "scaled_tiny", "architectures": ["ScaledForCausalLM"], "vocab_size": 400, "hidden_size": 8,
        "auto_map": {"AutoConfig": "modeling_scaled.ScaledConfig",
                     "AutoModelForCausalLM": "modeling_scaled.ScaledForCausalLM"}}))
    torch.manual_seed(0)
    scale = torch.ones(8)
    scale[3] = float("nan")
    save_file({"embed.weight": torch.randn(400, 8), "head.weight": torch.randn(400, 8), "head.bias": torch.zeros(400),
               "scale": scale}, str(out / "model.safetensors"))
    return out


def test_nan_buffer_is_refused_at_load(tiny_model, tmp_path):
    path = _nan_buffer_model(tiny_model, tmp_path / "nan-buffer")
    args = ModelArgs(model_type="auto", model_name_or_path=str(path), compute_dtype="fp32", trust_remote_code=True)
    with pytest.raises(UnituneError) as err:
        load(args, mode="infer")
    message = str(err.value)
    assert "buffer 'scale'" in message and "non-finite" in message and "\n" not in message


def test_nan_parameter_is_refused_at_load(tiny_model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / "nan-weight"
    shutil.copytree(tiny_model("llama"), path)
    weights = load_file(str(path / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UnituneError, match=r"parameter 'model\.layers\.1\.mlp\.up_proj\.weight' holds 1 non-finite"):
        load(ModelArgs(model_name_or_path=str(path), compute_dtype="fp32"), mode="infer")


def test_nan_loss_stops_the_run_without_an_adapter(tiny_model, tmp_path):
    """A learning rate of 1e30 blows the weights up after the first step: the loss turns NaN for real."""
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"}
                                for i in range(8)]))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_model("llama")), "--data", str(data), "--output_dir", str(out),
            "--max_steps", "6", "--per_gpu_train_batch_size", "4", "--learning_rate", "1e30", "--max_grad_norm", "0",
            "--warmup_ratio", "0", "--logging_steps", "1", "--save_steps", "1", "--cutoff_len", "64",
            "--cache_dir", str(tmp_path / "cache"), "--eval_data", str(data), "--eval_base", "false"]
    proc = subprocess.run([sys.executable, "uniform_finetune.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line[line.index("error: "):] for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith("error: training stopped at step "), proc.stderr[-2000:]
    last = errors[0]
    assert "non-finite" in last and "no adapter was written" in last
    step = int(last.split("step ")[1].split(":")[0])
    assert step >= 2  # the first step was finite: the guard stopped a run that had started well
    assert "Traceback" not in proc.stderr
    assert not (out / "adapter_model.safetensors").exists() and not (out / "adapter_config.json").exists()
    kept = sorted(out.glob("checkpoint-*"))
    assert kept and f"checkpoint-{step - 1}" in last  # the last good checkpoint is kept and named

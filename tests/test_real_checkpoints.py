"""The remote-code families on tiny checkpoints carrying their real published code (../shared/fixtures/remote).

Per family: unitune's model gives the logits of the checkpoint's own modeling code (patched here only as far as it
needs to run at all under transformers 5), LoRA trains on a fixed batch with a falling loss, and the adapter
reloads in a fresh process to the same logits. The whole user path (uniform_finetune.py, generate.py, merge.py,
server.py, web.py through the openai client) runs on every family under -m slow, on one by default.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from unitune.args import ModelArgs, PeftArgs, TrainArgs  # noqa: E402
from unitune.loader import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REMOTE = REPO.parent / "shared" / "fixtures" / "remote"
REAL = {"chatglm": "chatglm2-6b", "baichuan2": "baichuan2-13b-chat", "internlm2": "internlm2-chat-7b",
        "moss": "moss-moon-003-sft"}
NATIVE = {"chatglm": "GlmForCausalLM", "internlm2": "LlamaForCausalLM", "moss": "CodeGenForCausalLM"}
TEXTS = ["Hello world, how are you? I am fine, thank you.", "Write a short poem about the sea."]
DEFAULT_FRONT_END_FAMILY = "chatglm"


def fixture(family: str) -> Path:
    path = REMOTE / REAL[family]
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} is absent: the real-checkpoint fixtures live in ../shared/fixtures/remote")
    return path


def model_args(family: str, **kw) -> ModelArgs:
    return ModelArgs(model_type=family, model_name_or_path=str(fixture(family)), compute_dtype="fp32",
                     trust_remote_code=True, **kw)


def reference(family: str, path: Path):
    """The checkpoint's own modeling class with its own weights, float32."""
    from transformers import AutoConfig

    from unitune.families import read_weights, remote_class

    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    config.dtype = config.torch_dtype = torch.float32  # its code builds layers in config.torch_dtype (float16 here)
    classes = {"chatglm": "modeling_chatglm.ChatGLMForConditionalGeneration",
               "baichuan2": "modeling_baichuan.BaichuanForCausalLM",
               "internlm2": "modeling_internlm2.InternLM2ForCausalLM", "moss": "modeling_moss.MossForCausalLM"}
    if family == "chatglm":
        config.max_length = config.seq_length  # generation fields left PretrainedConfig in transformers 5
    if family == "internlm2":
        import importlib.util

        if importlib.util.find_spec("einops") is None:  # the reference only: unitune runs none of this file
            pytest.skip("InternLM2's own modeling file (the reference here) imports einops, which is not installed")
        config.rope_scaling = None  # transformers 5 aliases it to rope_parameters (never None); the file tests None
    model = remote_class(str(path), classes[family])(config)
    if family == "moss":  # transformers 5 removed PreTrainedModel.get_head_mask, which MOSS's forward calls
        model.transformer.get_head_mask = lambda head_mask, n: [None] * n
    model.load_state_dict(read_weights(path), strict=family != "baichuan2")
    return model.eval()


def _ids(tokenizer, text: str):
    return torch.tensor([tokenizer.encode(text)])


@pytest.mark.parametrize("family", list(REAL))
def test_logits_equal_the_checkpoints_own_code(family):
    loaded = load(model_args(family), mode="infer")
    module = type(loaded.model).__module__
    if family in NATIVE:  # converted: none of the checkpoint's modeling code runs
        assert type(loaded.model).__name__ == NATIVE[family] and module.startswith("transformers.models.")
    else:
        assert module.startswith("transformers_modules.")
    ref = reference(family, fixture(family))
    for text in TEXTS:
        ids = _ids(loaded.tokenizer, text)
        with torch.no_grad():
            ours = loaded.model(input_ids=ids).logits
            theirs = ref(input_ids=ids, use_cache=False, return_dict=True).logits
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(REAL))
def test_lora_trains_and_reloads_in_a_fresh_process(family, tmp_path):
    torch.manual_seed(0)
    args = model_args(family)
    loaded = load(args, mode="train", peft_args=PeftArgs(lora_r=4, lora_dropout=0.0), train_args=TrainArgs())
    tok = loaded.tokenizer
    assert tok.padding_side == "right"  # training batches pad on the right (ChatGLM's tokenizer asserted left)
    enc = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}
    model = loaded.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        final = float(model(**batch).loss)
        trained = model(input_ids=enc["input_ids"][:1]).logits
        with model.disable_adapter():
            base = model(input_ids=enc["input_ids"][:1]).logits
    assert all(torch.isfinite(torch.tensor(losses))) and final < losses[0], (losses, final)
    assert (trained - base).abs().max() > 1e-4
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    torch.save(enc["input_ids"][:1], tmp_path / "ids.pt")
    code = ("import sys, torch; from unitune.args import ModelArgs; from unitune.loader import load; "
            f"m = load(ModelArgs(model_type={family!r}, model_name_or_path={str(args.base_path)!r}, "
            f"compute_dtype='fp32', trust_remote_code=True, adapter={str(adapter)!r}), mode='infer').model; "
            f"ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True); "
            f"torch.save(m(input_ids=ids).logits.detach(), {str(tmp_path / 'logits.pt')!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt", weights_only=True), trained, atol=1e-5, rtol=0)


def test_trust_remote_code_is_asked_only_where_checkpoint_code_runs():
    from unitune.errors import UnituneError
    from unitune.families import checkpoint_code

    assert checkpoint_code("baichuan2", str(fixture("baichuan2"))) == ["modeling", "tokenizer"]
    for family in NATIVE:  # converted models: only the tokenizer's own class runs
        assert checkpoint_code(family, str(fixture(family))) == ["tokenizer"], family
    with pytest.raises(UnituneError, match=r"runs its own Python code \(tokenizer\).*--trust_remote_code"):
        load(replace(model_args("internlm2"), trust_remote_code=False), mode="infer")


# ---------------------------------------------------------------- the user's path, entry script by entry script
def _front_end_param(family):
    marks = () if family == DEFAULT_FRONT_END_FAMILY else (pytest.mark.slow,)
    return pytest.param(family, marks=marks, id=family)


def _run(script: str, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("family", [_front_end_param(f) for f in REAL])
def test_finetune_generate_merge_chat_and_serve(family, tmp_path):
    path = fixture(family)
    model = ["--model_type", family, "--model_name_or_path", str(path), "--trust_remote_code", "--compute_dtype", "fp32"]
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
                                for i in range(4)]), encoding="utf-8")
    out = tmp_path / "adapter"
    _run("uniform_finetune.py", *model, "--data", str(data), "--output_dir", str(out), "--max_steps", "3",
         "--per_gpu_train_batch_size", "4", "--learning_rate", "1e-2", "--logging_steps", "1", "--save_steps", "100",
         "--cutoff_len", "64", "--lora_r", "4", "--lora_dropout", "0", "--cache_dir", str(tmp_path / "cache"))
    losses = [h["loss"] for h in map(json.loads, (out / "loss_log.jsonl").read_text().splitlines()) if "loss" in h]
    assert len(losses) == 3 and all(l == l and abs(l) != float("inf") for l in losses)  # noqa: E741 (finite)
    assert losses[-1] < losses[0], losses  # one fixed batch of 4 every step
    assert (out / "adapter_model.safetensors").is_file()

    preds = tmp_path / "preds.jsonl"
    _run("generate.py", *model, "--lora_dir", str(out), "--data", str(data), "--output", str(preds),
         "--max_new_tokens", "4")
    assert [json.loads(line)["generate"] for line in preds.read_text().splitlines()].__len__() == 4

    merged = tmp_path / "merged"
    _run("merge.py", *model, "--lora_dir", str(out), "--merged_dir", str(merged))
    reloaded = load(ModelArgs(model_type=family, model_name_or_path=str(merged), compute_dtype="fp32",
                              trust_remote_code=True), mode="infer")
    tuned = load(replace(model_args(family), adapter=str(out)), mode="infer")
    messages = [{"role": "user", "content": "Say the number 1."}, {"role": "assistant", "content": "One."},
                {"role": "user", "content": "Say the number 2."}]
    served = reloaded.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                    add_special_tokens=False, return_dict=False)
    ours = tuned.tokenizer.encode(tuned.template.prompt_for("Say the number 2.", history=[("Say the number 1.", "One.")]))
    if family == "chatglm":  # its tokenizer adds [gMASK] sop itself (they have no text form), as it does for us
        ours = ours[2:]
    assert list(served) == ours, (served, ours)
    ids = _ids(tuned.tokenizer, TEXTS[0])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(input_ids=ids).logits, tuned.model(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)

    from tests.test_chat import spawn, turn

    child = spawn(path, "--verbose", "--model_type", family, "--trust_remote_code", "--lora_dir", str(out),
                  "--max_new_tokens", "4", "--compute_dtype", "fp32")
    try:
        prompt, _reply, n_tokens, _ = turn(child, "Say the number 2.")
        assert "Say the number 2." in prompt and n_tokens > 0
        child.sendline("exit")
    finally:
        child.close(force=True)

    import httpx
    import openai

    from tests.test_web import serve

    with serve(path, "--model_type", family, "--trust_remote_code", "--lora_dir", str(out), "--compute_dtype",
               "fp32") as url, httpx.Client(trust_env=False, timeout=120) as transport:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", http_client=transport, max_retries=0)
        answer = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=4,
                                                messages=[{"role": "user", "content": "Say the number 3."}])
        assert answer.choices[0].message.content is not None and answer.usage.completion_tokens > 0


@pytest.mark.parametrize("family", list(REAL))
def test_saved_tokenizer_reloads_the_same(family, tmp_path):
    """The tokenizer written beside an adapter or merged model (its class file travels along) encodes the same."""
    from unitune.families import load_tokenizer
    from unitune.models import get_model_spec

    spec = get_model_spec(family)
    tokenizer = load_tokenizer(spec.family, str(fixture(family)))
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(spec.family, str(tmp_path))
    assert type(again).__name__ == type(tokenizer).__name__
    for text in TEXTS:
        assert again.encode(text) == tokenizer.encode(text), family

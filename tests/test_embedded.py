"""The embedded default: synthetic data generator, shipped tokenizer and tiny base model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unitune import synth
from unitune.metrics import exact_match, extract_answer

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "unitune-tiny"
DATA_DIR = ROOT / "data" / "synth"


@pytest.fixture(scope="module")
def small():
    return synth.generate(seed=3, n_train=600, n_test=120)


def test_synth_is_deterministic(small):
    assert synth.generate(seed=3, n_train=600, n_test=120) == small
    assert synth.generate(seed=4, n_train=600, n_test=120)[0] != small[0]
    docs = list(synth.pretrain_documents(3, 20, small[2]))
    assert docs == list(synth.pretrain_documents(3, 20, small[2]))


def test_records_have_rationale_then_answer_line(small):
    train, test, _ = small
    for record in train + test:
        assert set(record) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) and v for v in record.values())
        *steps, last = record["output"].split("\n")
        assert steps, record  # a rationale precedes the answer
        assert re.fullmatch(r"(Answer: |答案：)\S.*", last), record
        assert extract_answer(record["output"]) == last.split(": ", 1)[-1].split("：", 1)[-1]
    assert exact_match([r["output"] for r in test], [r["output"] for r in test]) == 1.0


def test_both_languages_and_all_families(small):
    train, _, _ = small
    instructions = {r["instruction"] for r in train}
    for (family, lang), options in synth.INSTRUCTIONS.items():
        assert instructions & set(options), (family, lang)
    zh = sum(r["output"].splitlines()[-1].startswith("答案：") for r in train)
    assert 0.35 < zh / len(train) < 0.65


def test_answers_are_correct(small):
    train, _, _ = small
    for record in train:
        answer, text = extract_answer(record["output"]), record["input"]
        if re.fullmatch(r"\d+ [+-] \d+ [+-] \d+", text):
            assert int(answer) == eval(text)  # noqa: S307 - our own digits and operators
        elif re.fullmatch(r"\d+(, \d+)+", text):
            nums = [int(n) for n in text.split(", ")]
            assert answer in {", ".join(map(str, sorted(nums))), str(max(nums)), str(sum(nums))}
        elif record["output"].startswith(("Head:", "主体：")):
            head, rel, tail = answer.strip("()").split(", ")
            assert head in text and rel in text and tail in text


def test_test_inputs_never_in_training_or_pretraining(small):
    train, test, keys = small
    assert {r["input"] for r in test} == keys
    assert not keys & {r["input"] for r in train}
    corpus = "\n".join(synth.pretrain_documents(3, 300, keys))
    sentences = [k for k in keys if k.endswith(("。", "."))]
    assert not [k for k in sentences if k in corpus]
    assert "Answer:" not in corpus and "答案" not in corpus  # the base never sees the answer layout


def test_shipped_data_is_what_the_command_writes():
    train, test, _ = synth.generate(seed=0, n_train=4000, n_test=240)
    read = [json.loads(line) for line in (DATA_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert read == train
    read = [json.loads(line) for line in (DATA_DIR / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert read == test


def test_shipped_model_is_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "unitune_defaults.yaml"} <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file()) <= 10 * 1024 * 1024


def test_tokenizer_round_trips_chinese_and_english():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    assert tok.is_fast
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    for text in ["The letters are l-a-m-p.\nAnswer: pmal", "张伟出生于青川。\n答案：(张伟, 出生于, 青川)",
                 "Step 1: 23 + 45 = 68.", "混合 mixed 文本 text，标点！emoji 🙂 and tabs\tok"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok("张伟出生于青川", add_special_tokens=False)["input_ids"]) == 7  # a token per character
    assert len(tok(" 123", add_special_tokens=False)["input_ids"]) == 3  # a token per digit


def test_shipped_model_loads_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 3e6
    assert model.generation_config.eos_token_id == tok.eos_token_id
    enc = tok(["To work out 12 + 7 - 3, first"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_defaults_name_real_flags():
    from unitune.args import DataArgs, ModelArgs, PeftArgs, TrainArgs, load_yaml, parse
    from unitune.embedded import FINETUNE_DEFAULTS

    defaults = load_yaml(str(MODEL_DIR / "unitune_defaults.yaml"))
    assert defaults == FINETUNE_DEFAULTS, "the shipped defaults must be what `python -m unitune.embedded` writes"
    (_, data, peft_args, train), _ = parse([ModelArgs, DataArgs, PeftArgs, TrainArgs],
                                           ["--config", str(MODEL_DIR / "unitune_defaults.yaml")], prog="test")
    assert peft_args.lora_r == defaults["lora_r"]
    assert train.learning_rate == pytest.approx(defaults["learning_rate"])
    assert data.cutoff_len == defaults["cutoff_len"]


def test_no_flag_run_uses_the_tuned_defaults_and_other_methods_keep_their_presets():
    from unitune.embedded import FINETUNE_DEFAULTS
    from unitune.methods import read_preset
    from unitune.train import parse

    _, data, peft_args, train = parse([])
    assert (peft_args.peft_type, train.learning_rate, train.max_steps) == ("lora", 4e-3, FINETUNE_DEFAULTS["max_steps"])
    assert peft_args.lora_dropout == FINETUNE_DEFAULTS["lora_dropout"]
    # where the lora preset and the embedded defaults (measured on this model) disagree, the embedded ones win,
    # and what only the preset sets still applies (today's peft/lora.yaml agrees with them: a preset stands in)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("unitune.methods.read_preset", lambda name: {"method": "lora", "lora_dropout": 0.3,
                                                                "weight_decay": 0.25})
        _, _, preset_peft, preset_train = parse([])
    assert (preset_peft.lora_dropout, preset_train.weight_decay) == (FINETUNE_DEFAULTS["lora_dropout"], 0.25)
    assert peft_args.lora_target_modules == FINETUNE_DEFAULTS["lora_target_modules"]
    assert data.cutoff_len == FINETUNE_DEFAULTS["cutoff_len"]
    _, _, peft_args, train = parse(["--peft_type", "prompt"])
    assert train.learning_rate == read_preset("prompt")["learning_rate"] != FINETUNE_DEFAULTS["learning_rate"]
    assert train.max_steps == FINETUNE_DEFAULTS["max_steps"]  # the model's run length still applies

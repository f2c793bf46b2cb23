"""CMMLU on the real dev split with the embedded default: logits scoring, generate mode, and the same run
against web.py serving the model through --model_base_url."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unitune.evaluation import run

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CMMLU = SHARED / "cmmlu"
needs_cmmlu = pytest.mark.skipif(not (CMMLU / "dev").is_dir(),
                                 reason="../shared/data/cmmlu (CMMLU dev split) is absent")
FEW = ["agronomy", "arts", "genetics", "marketing"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_cmmlu
def test_logits_over_the_real_dev_split(tmp_path):
    out = tmp_path / "logits"
    result = run(["cmmlu", "--method", "logits", "--data_dir", str(CMMLU), "--split", "dev", "--batch_size", "32",
                  "--output_dir", str(out)])
    assert len(result["breakdown"]["subject"]) == 67 and result["n"] == 335
    assert list(result["breakdown"]["category"]) == ["STEM", "Humanities", "Social Science", "Other", "China specific"]
    assert result["unparsed"] == 0  # a letter is always chosen by its logit
    preds = _lines(Path(result["predictions"]))
    assert len(preds) == 335 and {p["prediction"] for p in preds} <= set("ABCD")
    correct = sum(p["prediction"] == p["answer"] for p in preds)
    assert result["overall"] == pytest.approx(correct / 335)
    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert saved["overall"] == result["overall"] and 0.0 <= saved["overall"] <= 1.0
    # the same settings resume from the predictions file instead of scoring again
    stamp = Path(result["predictions"]).stat().st_mtime_ns
    again = run(["cmmlu", "--method", "logits", "--data_dir", str(CMMLU), "--split", "dev", "--output_dir", str(out)])
    assert again["predictions"] == result["predictions"] and again["overall"] == result["overall"]
    assert Path(result["predictions"]).stat().st_mtime_ns >= stamp


@needs_cmmlu
@pytest.mark.parametrize("n_shot", [0, 5])
def test_batched_logits_equal_one_question_a_forward_pass(n_shot):
    """Whole prompts batched (0-shot) and a shared 5-shot prefix run once with its cache reused for batches of
    the rest give the logits of one question a forward pass over its whole prompt."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.evaluation import mcq
    from unitune.evaluation.answerers import choose_by_logits, letter_logits, prefix_groups
    from unitune.paths import embedded_base

    opts = SimpleNamespace(benchmark="cmmlu", data_dir=str(CMMLU), split="dev", n_shot=n_shot, subjects=FEW)
    prompts = [q["prompt"] for q in mcq.questions(opts)]
    tokenizer = AutoTokenizer.from_pretrained(embedded_base())
    model = AutoModelForCausalLM.from_pretrained(embedded_base()).eval()
    groups = prefix_groups(tokenizer(prompts)["input_ids"])
    assert any(len(members) > 1 for _, members in groups) == (n_shot > 0)  # the shared path is what runs
    one = letter_logits(model, tokenizer, prompts, batch_size=1, share_prefix=False)
    batched = letter_logits(model, tokenizer, prompts, batch_size=16)
    assert (batched - one).abs().max() < 1e-4
    assert choose_by_logits(model, tokenizer, prompts, batch_size=16) == ["ABCD"[i] for i in one.argmax(-1)]


def test_prefix_groups_by_hand():
    from unitune.evaluation.answerers import MIN_SHARED, prefix_groups

    head = list(range(100, 100 + 2 * MIN_SHARED))
    encoded = [head + [1, 2], [7] * 40, head + [3], head + [1, 9, 9], head[:MIN_SHARED - 1] + [5] * 30]
    groups = prefix_groups(encoded)
    assert any(n == len(head) and sorted(ms) == [0, 2, 3] for n, ms in groups)  # the longest common prefix
    assert sorted(m for _, ms in groups for m in ms) == [0, 1, 2, 3, 4]  # every prompt scored once
    assert all(n <= len(encoded[i]) - 1 for n, ms in groups for i in ms)  # each keeps a token of its own
    assert [ms for _, ms in groups if 1 in ms] == [[1]] and [ms for _, ms in groups if 4 in ms] == [[4]]


@needs_cmmlu
def test_generate_mode_local_and_through_web_py_agree(tmp_path):
    from tests.test_web import serve
    from unitune.paths import embedded_base

    common = ["cmmlu", "--method", "generate", "--data_dir", str(CMMLU), "--split", "dev", "--subjects", *FEW,
              "--max_new_tokens", "8"]
    local = run([*common, "--output_dir", str(tmp_path / "local")])
    assert local["n"] == 20 and local["unparsed"] <= 20
    with serve(embedded_base(), "--api_key", "k") as url:
        remote = run([*common, "--model_base_url", f"{url}/v1", "--model_name", "unitune-tiny", "--model_api_key",
                      "k", "--batch_size", "2", "--output_dir", str(tmp_path / "remote")])
    by_local = {p["id"]: p["prediction"] for p in _lines(Path(local["predictions"]))}
    by_remote = {p["id"]: p["prediction"] for p in _lines(Path(remote["predictions"]))}
    assert by_local == by_remote and any(by_local.values())
    assert remote["overall"] == local["overall"] and remote["unparsed"] == local["unparsed"]
    assert local["predictions"] != remote["predictions"]  # another answerer: another predictions file


def test_changed_settings_never_reuse_answers(tmp_path, tiny_model):
    """Two decoding settings on one model write two predictions files; the key names model and decoding."""
    from unitune.evaluation.predict import run_key

    questions = [{"id": "q", "prompt": "p", "answer": "A"}]
    a = run_key("cmmlu", "generate", questions, {"model": "m", "decoding": {"do_sample": False}})
    b = run_key("cmmlu", "generate", questions, {"model": "m", "decoding": {"do_sample": True}})
    c = run_key("cmmlu", "generate", questions, {"model": "m", "adapter": "x", "decoding": {"do_sample": False}})
    assert len({a, b, c}) == 3
    data = tmp_path / "ie.jsonl"
    data.write_text(json.dumps({"instruction": "Extract the triple.", "input": "A likes B.",
                                "output": "Answer: (A, likes, B)"}) + "\n", encoding="utf-8")
    model = str(tiny_model("llama"))
    first = run(["ie", "--data", str(data), "--model_name_or_path", model, "--max_new_tokens", "4",
                 "--output_dir", str(tmp_path / "out")])
    second = run(["ie", "--data", str(data), "--model_name_or_path", model, "--max_new_tokens", "5",
                  "--output_dir", str(tmp_path / "out")])
    assert first["predictions"] != second["predictions"]
    assert len(list((tmp_path / "out" / "predictions").glob("*.jsonl"))) == 2


def test_the_key_names_the_template_actually_used(tiny_model):
    """--model_type auto names no template: the key records the one the loader resolves (not ""), and a
    changed --template changes the key, so its answers are never reused."""
    from unitune.evaluation.answerers import LocalAnswerer
    from unitune.evaluation.cli import parse
    from unitune.evaluation.predict import run_key
    from unitune.loader import load

    model = str(tiny_model("llama"))
    questions = [{"id": "q", "prompt": "p", "answer": "A"}]
    keys, names = [], []
    for extra in ([], ["--template", "alpaca"], ["--template", "vicuna"]):
        _, model_args, gen_args = parse(["ie", "--model_type", "auto", "--model_name_or_path", model, *extra])
        answerer = LocalAnswerer(model_args, gen_args)
        identity = answerer.identity()
        assert answerer._loaded is None  # the key is known before anything loads
        names.append(identity["template"])
        keys.append(run_key("ie", "generate", questions, identity))
        if not extra:
            assert identity["template"] == load(model_args, mode="infer").template.name != ""
    assert names[1:] == ["alpaca", "vicuna"] and keys[1] != keys[2]
    assert (keys[0] == keys[1]) == (names[0] == "alpaca")  # auto resolving to alpaca is the alpaca run


def test_shared_prefix_under_a_lora_adapter_and_not_under_prefix_tuning():
    """A LoRA model shares the prefix cache and gives the whole-prompt logits; a prefix-tuning adapter fills the
    cache itself, so its prompts run whole (and still agree)."""
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.evaluation.answerers import _forward_kwargs, letter_logits
    from unitune.paths import embedded_base

    tokenizer = AutoTokenizer.from_pretrained(embedded_base())
    head = "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n" + "题目：例子\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：A\n\n" * 3
    prompts = [head + f"题目：问题{i}{'长' * i}\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：" for i in range(7)]
    configs = {True: LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               False: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)}
    for shareable, config in configs.items():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(embedded_base()), config).eval()
        assert _forward_kwargs(model)[2] is shareable
        one = letter_logits(model, tokenizer, prompts, batch_size=1, share_prefix=False)
        assert (letter_logits(model, tokenizer, prompts, batch_size=4) - one).abs().max() < 1e-4

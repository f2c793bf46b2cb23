"""generate.py: batch predict to resumable JSONL, batching that changes nothing, every decoding preset, REPL."""

from __future__ import annotations

import io
import json

import pytest

from unitune import predict
from unitune.errors import UnituneError
from unitune.generation import DECODING_PRESETS


def _records(n: int) -> list[dict]:
    """Prompts of varied lengths (so batches get padding), with and without input / output."""
    out = []
    for i in range(n):
        record = {"instruction": f"Add the numbers {i} and {2 * i + 1}." + " Then explain." * (i % 4)}
        if i % 3 == 0:
            record["input"] = " ".join(str(j) for j in range(i % 7))
        if i % 5 == 0:
            record["output"] = f"Answer: {3 * i + 1}"
        out.append(record)
    # a conversation that ends on the user's turn: its last message is what gets answered
    out.append({"conversations": [{"from": "human", "value": "Add 1 and 2."}, {"from": "gpt", "value": "Answer: 3"},
                                  {"from": "human", "value": "And 2 and 5?"}]})
    return out


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def llama(tiny_model):
    return str(tiny_model("llama"))


def _argv(model, data, output, *extra):
    return ["--model_name_or_path", model, "--data", str(data), "--output", str(output), "--max_new_tokens", "6",
            *extra]


def test_writes_every_record_with_answer_and_resumes(llama, tmp_path):
    records = _records(11)
    data = _write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    stats = predict.run(_argv(llama, data, out, "--batch_size", "4"))
    assert stats["generated"] == len(records) and stats["resumed"] == 0
    written = _read_jsonl(out)
    assert len(written) == len(records)
    for index, (line, record) in enumerate(zip(written, records)):
        assert line["_index"] == index  # rewritten in input order once complete
        assert {k: v for k, v in line.items() if k not in ("generate", "_index", "_hash", "_settings")} == record
        assert isinstance(line["generate"], str) and line["generate"]

    # an interrupted earlier run: 4 records done (marked so a regeneration would show), then a cut line
    done = [dict(written[i], generate=f"EARLIER {i}") for i in (7, 0, 3, 9)]
    out.write_text("".join(json.dumps(d) + "\n" for d in done) + json.dumps(written[1])[:25], encoding="utf-8")
    stats = predict.run(_argv(llama, data, out, "--batch_size", "4"))
    assert stats["resumed"] == 4 and stats["generated"] == len(records) - 4
    again = _read_jsonl(out)
    assert [line["_index"] for line in again] == list(range(len(records)))
    for index, line in enumerate(again):
        expected = f"EARLIER {index}" if index in (7, 0, 3, 9) else written[index]["generate"]
        assert line["generate"] == expected

    # everything done: a re-run generates nothing and leaves the file as it is
    before = out.read_text(encoding="utf-8")
    stats = predict.run(_argv(llama, data, out))
    assert stats["generated"] == 0 and stats["resumed"] == len(records)
    assert out.read_text(encoding="utf-8") == before


def test_changed_input_is_refused(llama, tmp_path):
    records = _records(3)
    data = _write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    line = {**records[1], "generate": "x", "_index": 1, "_hash": predict.record_hash(records[1])}
    out.write_text(json.dumps(line) + "\n", encoding="utf-8")
    records[1] = {**records[1], "instruction": "Something else entirely."}
    _write_jsonl(data, records)
    with pytest.raises(UnituneError, match=r"line 1: .*record 1.*input changed"):
        predict.run(_argv(llama, data, out))
    out.write_text(json.dumps({"instruction": "a", "generate": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(UnituneError, match="not written by generate.py"):
        predict.run(_argv(llama, data, out))


def test_batch_16_and_batch_1_give_identical_greedy_answers(llama, tmp_path):
    data = _write_jsonl(tmp_path / "in.jsonl", _records(19))  # 20 records: a full batch of 16 and a rest
    predict.run(_argv(llama, data, tmp_path / "b16.jsonl", "--batch_size", "16", "--max_new_tokens", "8"))
    predict.run(_argv(llama, data, tmp_path / "b1.jsonl", "--batch_size", "1", "--max_new_tokens", "8"))
    batched = [r["generate"] for r in _read_jsonl(tmp_path / "b16.jsonl")]
    single = [r["generate"] for r in _read_jsonl(tmp_path / "b1.jsonl")]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts really differ in what they produce


@pytest.mark.parametrize("preset", sorted(DECODING_PRESETS))
def test_every_decoding_preset_runs(llama, tmp_path, preset):
    data = _write_jsonl(tmp_path / "in.jsonl", _records(4))
    out = tmp_path / f"{preset}.jsonl"
    stats = predict.run(_argv(llama, data, out, "--decoding", preset, "--batch_size", "3", "--max_new_tokens", "4"))
    assert stats["generated"] == 5
    assert all(isinstance(r["generate"], str) and r["generate"] for r in _read_jsonl(out))


def _naive_contrastive(model, ids: list[int], steps: int, alpha: float, k: int, eos: int, pad: int) -> list[int]:
    """Textbook contrastive search on one unpadded prompt: full forward passes, no cache, no batching."""
    import torch

    seq = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            if seq[-1] == eos and len(seq) > len(ids):  # finished rows of a batch are padded
                seq += [pad] * (len(ids) + steps - len(seq))
                break
            out = model(torch.tensor([seq]), output_hidden_states=True)
            probs = out.logits[0, -1].float().softmax(-1)
            top_probs, top_ids = probs.topk(k)
            best, best_score = None, None
            for p, cand in zip(top_probs.tolist(), top_ids.tolist()):
                hidden = model(torch.tensor([seq + [cand]]), output_hidden_states=True).hidden_states[-1][0]
                penalty = torch.nn.functional.cosine_similarity(hidden[:-1], hidden[-1:], dim=-1).max().item()
                score = (1 - alpha) * p - alpha * penalty
                if best_score is None or score > best_score:
                    best, best_score = cand, score
            seq.append(best)
    return seq[len(ids):]


def test_contrastive_search_matches_the_textbook_algorithm(llama):
    """transformers 5 sends contrastive search to the Hub; ours must be the real algorithm, batched."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.generation import decoding_config, generate_ids

    tok = AutoTokenizer.from_pretrained(llama, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    prompts = ["The quick brown fox jumps over the lazy dog. Add 5", "答案"]  # different lengths: padding
    config = decoding_config("contrastive")
    enc = tok(prompts, return_tensors="pt", padding=True)
    got = generate_ids(model, dict(enc), 5, tok.pad_token_id, **config)[:, enc["input_ids"].shape[1]:]
    for row, prompt in enumerate(prompts):
        want = _naive_contrastive(model, tok(prompt)["input_ids"], 5, config["penalty_alpha"], config["top_k"],
                                  tok.eos_token_id, tok.pad_token_id)
        assert got[row].tolist() == want
    # model.generate's streamer protocol: the prompt first, then one token per step
    class Collect:
        def __init__(self):
            self.puts = []

        def put(self, value):
            self.puts.append(value.reshape(-1).tolist())

        def end(self):
            self.puts.append("end")

    one = tok(prompts[:1], return_tensors="pt")
    streamer = Collect()
    ids = generate_ids(model, dict(one), 5, tok.pad_token_id, streamer=streamer, **config)[0].tolist()
    assert streamer.puts[0] == one["input_ids"][0].tolist() and streamer.puts[-1] == "end"
    assert streamer.puts[0] + [t for put in streamer.puts[1:-1] for t in put] == ids
    # alpha -> 0 is greedy search
    greedy = generate_ids(model, dict(enc), 6, tok.pad_token_id, do_sample=False)
    near_zero = generate_ids(model, dict(enc), 6, tok.pad_token_id,
                             **decoding_config("contrastive", penalty_alpha=1e-9))
    assert near_zero.tolist() == greedy.tolist()


def test_interactive_answers_each_line_until_exit(llama, tmp_path):
    model_args, gen_args, _ = predict.parse(["--model_name_or_path", llama, "--max_new_tokens", "5", "--interactive"])
    stdout = io.StringIO()
    answered = predict.interactive(model_args, gen_args, stdin=io.StringIO("Add 2 and 3.\n\nSay hi.\nexit\nNot read\n"),
                                   stdout=stdout)
    assert answered == 2
    # the same instructions through the batch path give the same answers, one after the other
    data = _write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Add 2 and 3."}, {"instruction": "Say hi."}])
    predict.run(_argv(llama, data, tmp_path / "out.jsonl", "--max_new_tokens", "5"))
    answers = [r["generate"] for r in _read_jsonl(tmp_path / "out.jsonl")]
    assert stdout.getvalue() == "".join(a + "\n" for a in answers)


def test_flag_mistakes_are_one_line_errors(llama, tmp_path):
    with pytest.raises(UnituneError, match="--interactive"):
        predict.run(["--model_name_or_path", llama])
    with pytest.raises(UnituneError, match="drop --data"):
        predict.run(["--model_name_or_path", llama, "--interactive", "--data", "x.jsonl"])
    with pytest.raises(UnituneError, match="not found"):
        predict.run(["--model_name_or_path", llama, "--data", str(tmp_path / "missing.jsonl")])
    with pytest.raises(UnituneError, match="unknown --decoding"):
        predict.run(["--model_name_or_path", llama, "--data", "x.jsonl", "--decoding", "nucleus"])
    with pytest.raises(UnituneError, match="--top_k of 2"):
        predict.run(["--model_name_or_path", llama, "--data", "x.jsonl", "--penalty_alpha", "0.5", "--top_k", "1"])
    data = _write_jsonl(tmp_path / "in.jsonl", [{"input": "no instruction"}])
    with pytest.raises(UnituneError, match=r"in.jsonl: line 1: missing field 'instruction'"):
        predict.run(_argv(llama, data, tmp_path / "out.jsonl"))


# ---------------------------------------------------------------- issue 10: stale answers
def _cli(cwd, *argv):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, str(repo / "generate.py"), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def lora_adapter(llama, tmp_path_factory):
    """A LoRA adapter that really changes the answers (random B, not the zero init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "my-lora"
    model = AutoModelForCausalLM.from_pretrained(llama)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def test_other_settings_never_get_earlier_answers(llama, lora_adapter, tmp_path):
    from pathlib import Path

    data = _write_jsonl(tmp_path / "questions.jsonl", [{"instruction": "Add 1 and 2."}, {"instruction": "Say hi."}])
    base = ["--model_name_or_path", llama, "--data", str(data), "--max_new_tokens", "4"]
    first = _cli(tmp_path, *base)
    assert first.returncode == 0, first.stderr
    base_out = tmp_path / "output" / "generate" / f"questions-{Path(llama).name}.jsonl"
    assert base_out.is_file(), first.stderr  # the default path names the base ...

    adapted = _cli(tmp_path, *base, "--lora_dir", str(lora_adapter))
    assert adapted.returncode == 0, adapted.stderr
    assert "already answered" not in adapted.stderr
    lora_out = tmp_path / "output" / "generate" / "questions-my-lora.jsonl"  # ... or the adapter
    lines = _read_jsonl(lora_out)
    assert [line["_settings"]["adapter"] for line in lines] == [str(lora_adapter.resolve())] * 2
    assert [line["generate"] for line in lines] != [line["generate"] for line in _read_jsonl(base_out)]

    # the same output file with another setting: refused, naming it, before anything loads or is written
    before = lora_out.read_text(encoding="utf-8")
    for extra, named in ((["--template", "alpaca", "--decoding", "beam"], "--decoding: greedy then, beam now"),
                         (["--num_beams", "2"], "--num_beams: 1 then, 2 now"),
                         (["--max_new_tokens", "5"], "--max_new_tokens: 4 then, 5 now"),
                         (["--template", "vicuna"], "--template: alpaca then, vicuna now")):
        proc = _cli(tmp_path, *base, "--lora_dir", str(lora_adapter), *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], proc.stderr
        assert "questions-my-lora.jsonl" in lines[0] and "Traceback" not in proc.stderr
    swapped = _cli(tmp_path, *base, "--output", str(lora_out))  # the base model on the adapter's answers
    assert swapped.returncode == 2 and "--adapter: none then" not in swapped.stderr
    assert "--adapter" in swapped.stderr and "none now" in swapped.stderr, swapped.stderr
    assert lora_out.read_text(encoding="utf-8") == before


def test_an_edited_template_or_the_template_auto_resolves_is_a_changed_setting(llama, tmp_path):
    """_settings records the template the run prompts with, by name and by digest: answers written before a
    template file was edited are refused (naming --template), and `--model_type auto` records what it resolved
    to, not an empty name."""
    import dataclasses
    from types import SimpleNamespace

    from unitune.templates import get_template

    args = SimpleNamespace(base_path=llama, adapter=None, quantization_bit=None, compute_dtype="auto")
    gen = SimpleNamespace(decoding="greedy", generate_kwargs=dict, max_new_tokens=4)
    alpaca = get_template("alpaca")
    edited = dataclasses.replace(alpaca, system=alpaca.system + " Be brief.")
    then, now = predict.settings(args, gen, alpaca), predict.settings(args, gen, edited)
    assert then["template"] == now["template"] == "alpaca" and then != now
    assert predict.changed_setting(then, now).startswith("--template: alpaca renders prompts differently now")

    data = _write_jsonl(tmp_path / "q.jsonl", [{"instruction": "Add 1 and 2."}])
    out = tmp_path / "answers.jsonl"
    first = _cli(tmp_path, "--model_name_or_path", llama, "--model_type", "auto", "--data", str(data),
                 "--max_new_tokens", "2", "--output", str(out))
    assert first.returncode == 0, first.stderr
    written = _read_jsonl(out)[0]["_settings"]
    assert written["template"] and written["template_digest"], written

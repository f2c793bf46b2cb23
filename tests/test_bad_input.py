"""Bad input to uniform_finetune.py: one `error:` line naming file, record and field; no traceback; no output.

Every run is the real command line in a subprocess; all must fail before the model loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOOD = [{"instruction": "Add 1 and 2.", "input": "", "output": "3"},
        {"instruction": "Add 2 and 2.", "input": "", "output": "4"}]


@pytest.fixture(scope="module")
def tiny_llama(tiny_model) -> Path:
    """A real tiny llama: were a bad run not to stop early, it would train and write outputs the tests see."""
    return tiny_model("llama")  # conftest.py: built once per session, shared, read-only


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# (case id, data file name, its text or None, extra argv, substrings the error line must contain)
CASES = [
    ("malformed-json-array", "bad.json",
     '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n', [],
     ["bad.json", "line 3", "invalid JSON"]),
    ("malformed-jsonl-line", "bad.jsonl", jsonl(GOOD) + '{"instruction": "x", "output": \n', [],
     ["bad.jsonl", "line 3", "invalid JSON"]),
    ("jsonl-in-dot-json", "lines.json", jsonl(GOOD) + "{oops}\n", [], ["lines.json", "line 3", "invalid JSON"]),
    ("missing-instruction", "d.jsonl", jsonl([GOOD[0], {"input": "", "output": "3"}]), [],
     ["d.jsonl", "line 2", "missing field 'instruction'"]),
    ("missing-output", "d.json", json.dumps([GOOD[0], GOOD[1], {"instruction": "q"}]), [],
     ["d.json", "record 2", "missing field 'output'"]),
    ("non-string-field", "d.json", json.dumps([{"instruction": "q", "output": 3}]), [],
     ["d.json", "record 0", "'output'", "must be a string", "int"]),
    ("csv-missing-column", "d.csv", "instruction,input\nq,x\n", [], ["d.csv", "line 2", "missing field 'output'"]),
    ("bad-conversation-role", "c.json",
     json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}]), [],
     ["c.json", "record 0", "conversations[1]", "unknown role 'robot'"]),
    ("empty-file", "empty.jsonl", "", [], ["empty.jsonl", "empty"]),
    ("blank-json-array", "empty.json", "[]", [], ["empty.json", "no records"]),
    ("missing-file", "absent.json", None, [], ["absent.json", "not found"]),
    ("unknown-dataset", None, None, ["--data", "no_such_set"],
     ["unknown dataset 'no_such_set'", "known:", "alpaca", "unitune-synth"]),
    ("unknown-model-type", None, None, ["--model_type", "gpt9"],
     ["--model_type 'gpt9'", "choose one of", "llama", "chatglm", "baichuan"]),
    ("unknown-peft-type", None, None, ["--peft_type", "magic"], ["--peft_type 'magic'", "choose one of", "lora"]),
    ("unknown-flag", None, None, ["--lora_rank", "8"], ["unrecognized arguments: --lora_rank"]),
    ("bad-flag-value", None, None, ["--epochs", "three"], ["--epochs", "three"]),
    ("bad-report-to", None, None, ["--report_to", "mlflow"], ["--report_to 'mlflow'", "tensorboard", "wandb"]),
    ("unknown-template", None, None, ["--template", "nope"], ["--template 'nope'", "alpaca_zh"]),
    ("missing-model-dir", None, None, ["--model_name_or_path", "/no/such/model"], ["/no/such/model"]),
    ("resume-without-checkpoint", None, None, ["--resume_from_checkpoint"], ["--resume_from_checkpoint", "checkpoint"]),
    ("family-mismatch", None, None, ["--model_type", "chatglm"], ["--model_type chatglm", "'llama' checkpoint"]),
]


def finetune(argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "uniform_finetune.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: list[str], out: Path) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert not out.exists() or not any(out.iterdir()), f"{out} has {list(out.iterdir())}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line(case, tiny_llama, tmp_path):
    _, name, text, extra, expected = case
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_llama), "--output_dir", str(out), "--max_steps", "2",
            "--cache_dir", str(tmp_path / "cache")]
    if name is not None:
        path = tmp_path / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
        argv += ["--data", str(path)]
    else:
        good = tmp_path / "good.jsonl"
        good.write_text(jsonl(GOOD), encoding="utf-8")
        argv += ["--data", str(good)]
    proc = finetune(argv + extra)
    assert_one_error_line(proc, expected, out)


def test_bad_second_file_still_one_line(tiny_llama, tmp_path):
    """A good file read before the bad one leaves no progress line before the error."""
    good, bad, out = tmp_path / "good.jsonl", tmp_path / "bad.jsonl", tmp_path / "out"
    good.write_text(jsonl(GOOD))
    bad.write_text(jsonl([GOOD[0], {"instruction": ["a", "list"], "output": "x"}]))
    proc = finetune(["--model_name_or_path", str(tiny_llama), "--data", str(good), str(bad), "--output_dir", str(out)])
    assert_one_error_line(proc, ["bad.jsonl", "line 2", "'instruction'", "must be a string", "list"], out)


def test_bad_config_key(tiny_llama, tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model_name_or_path: {tiny_llama}\nlora_rank: 8\n")
    proc = finetune(["--config", str(cfg), "--output_dir", str(out)])
    assert_one_error_line(proc, ["run.yaml", "unknown flag 'lora_rank'"], out)
    cfg.write_text("model_name_or_path: [unclosed\n")
    proc = finetune(["--config", str(cfg), "--output_dir", str(out)])
    assert_one_error_line(proc, ["run.yaml", "not valid YAML"], out)


def test_bad_data_fails_before_torch_is_imported(tiny_llama, tmp_path):
    """Data is read and checked before the model loads: torch is not even imported when it is bad."""
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps([{"instruction": "q"}]))
    argv = ["--model_name_or_path", str(tiny_llama), "--data", str(bad), "--output_dir", str(tmp_path / "out")]
    code = ("import sys; from unitune.train import run; from unitune.errors import UnituneError\n"
            f"try:\n    run({argv!r})\nexcept UnituneError as err:\n    print('ERR', err)\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "ERR" in proc.stdout and "missing field 'output'" in proc.stdout, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout


# ---------------------------------------------------------------- issue 10: before anything loads or is written
def _gbk(folder: Path) -> list[str]:
    path = folder / "gbk.json"
    path.write_bytes(json.dumps([{"instruction": "你好", "output": "世界"}], ensure_ascii=False).encode("gbk"))
    return ["--data", str(path)]


def _dir_as_data(folder: Path) -> list[str]:
    (folder / "datadir").mkdir()
    return ["--data", str(folder / "datadir")]


def _history_numbers(folder: Path) -> list[str]:
    path = folder / "h.json"
    path.write_text(json.dumps([{"instruction": "q", "output": "a", "history": [[1, 2]]}]))
    return ["--data", str(path)]


def _conversation_system_number(folder: Path) -> list[str]:
    path = folder / "s.json"
    path.write_text(json.dumps([{"system": 7, "conversations": [{"from": "human", "value": "q"},
                                                                {"from": "gpt", "value": "a"}]}]))
    return ["--data", str(path)]


def _output_is_a_file(folder: Path) -> list[str]:
    (folder / "taken").write_text("mine")
    return ["--output_dir", str(folder / "taken")]


def _output_under_a_file(folder: Path) -> list[str]:
    (folder / "taken").write_text("mine")
    return ["--output_dir", str(folder / "taken" / "run")]


EARLY = [  # (case id, argv maker or fixed flags, substrings of the one error line)
    ("gbk-encoded-json", _gbk, ["gbk.json", "not UTF-8"]),
    ("directory-as-data", _dir_as_data, ["datadir", "is a directory"]),
    ("history-of-numbers", _history_numbers, ["h.json", "record 0", "'history'", "must be a string", "int"]),
    ("system-not-a-string", _conversation_system_number, ["s.json", "record 0", "'system'", "must be a string"]),
    ("output-dir-is-a-file", _output_is_a_file, ["--output_dir", "taken", "is a file"]),
    ("output-dir-under-a-file", _output_under_a_file, ["--output_dir", "taken", "no directory can be made"]),
    ("output-dir-unwritable", ["--output_dir", "/proc/unitune-test/run"], ["--output_dir", "cannot write"]),
    ("negative-learning-rate", ["--learning_rate", "-1"], ["--learning_rate -1.0", "greater than 0"]),
    ("max-steps-zero", ["--max_steps", "0"], ["--max_steps 0", "trains nothing"]),
    ("epochs-zero", ["--epochs", "0"], ["--epochs 0.0", "greater than 0"]),
    ("batch-size-zero", ["--per_gpu_train_batch_size", "0"], ["--per_gpu_train_batch_size 0"]),
    ("dropout-above-one", ["--lora_dropout", "1.5"], ["--lora_dropout 1.5"]),
    ("warmup-above-one", ["--warmup_ratio", "2"], ["--warmup_ratio 2.0"]),
    ("seed-out-of-range", ["--seed", "-1"], ["--seed -1"]),
    ("cutoff-zero", ["--cutoff_len", "0"], ["--cutoff_len 0"]),
]


@pytest.mark.parametrize("case", EARLY, ids=[c[0] for c in EARLY])
def test_bad_input_fails_before_the_model_loads(case, tmp_path):
    """--model_name_or_path is an EMPTY directory: a check that ran only after loading would crash the loader."""
    _, make, expected = case
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(GOOD), encoding="utf-8")
    out = tmp_path / "out"
    extra = make(tmp_path) if callable(make) else make
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["--model_name_or_path", str(empty), "--data", str(good), "--output_dir", str(out), "--max_steps", "2",
            "--cache_dir", str(tmp_path / "cache"), *extra]
    proc = finetune(argv)
    assert_one_error_line(proc, expected, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written: no cache, no output dir
    if (tmp_path / "taken").exists():
        assert (tmp_path / "taken").read_text() == "mine"

"""Decoding and limit flags of web.py, server.py and generate.py are held to the API's request rules (issue 10).

Every run points --model_name_or_path at an EMPTY directory: a flag that were not checked before the model
loads would crash in the loader instead of giving its one `error:` line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CASES = [  # (script, flags, what the one error line names)
    ("web.py", ["--max_new_tokens", "-3", "--temperature", "-1", "--do_sample"], "--max_new_tokens -3"),
    ("web.py", ["--temperature", "-1", "--do_sample"], "--temperature -1.0"),
    ("web.py", ["--max_new_tokens", "0"], "--max_new_tokens 0"),
    ("web.py", ["--cutoff_len", "0"], "--cutoff_len 0"),
    ("web.py", ["--max_queue", "0"], "--max_queue 0"),
    ("web.py", ["--max_batch_size", "0"], "--max_batch_size 0"),
    ("web.py", ["--infer_backend", "sglang"], "--infer_backend"),
    ("web.py", ["--infer_backend", "vllm"], "--infer_backend vllm: vLLM "),  # not installed, or no GPU
    ("web.py", ["--top_p", "1.5", "--decoding", "sample"], "--top_p 1.5"),
    ("web.py", ["--repetition_penalty", "nan"], "--repetition_penalty nan"),
    ("server.py", ["--max_new_tokens", "0"], "--max_new_tokens 0"),
    ("server.py", ["--cutoff_len", "-5"], "--cutoff_len -5"),
    ("server.py", ["--top_k", "-1"], "--top_k -1"),
    ("server.py", ["--temperature", "3"], "--temperature 3.0"),
    ("generate.py", ["--data", "x.jsonl", "--num_beams", "0"], "--num_beams 0"),
    ("generate.py", ["--data", "x.jsonl", "--max_new_tokens", "-1"], "--max_new_tokens -1"),
    ("generate.py", ["--data", "x.jsonl", "--batch_size", "0"], "--batch_size 0"),
    ("generate.py", ["--data", "x.jsonl", "--repetition_penalty", "0"], "--repetition_penalty 0.0"),
    ("generate.py", ["--interactive", "--penalty_alpha", "2"], "--penalty_alpha 2.0"),
]


@pytest.mark.parametrize("script, flags, named", CASES, ids=[f"{c[0]}{' '.join(c[1])}" for c in CASES])
def test_bad_flag_is_one_line_before_the_model_loads(script, flags, named, tmp_path):
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    proc = subprocess.run([sys.executable, script, "--model_name_or_path", str(empty), *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr


def test_flag_and_request_rules_are_one_table():
    """A flag value and the same request value are refused by the same rule, with the same reason."""
    import pydantic

    from unitune.api_schema import ChatCompletionRequest
    from unitune.errors import UnituneError
    from unitune.limits import check_value

    for name, value in (("temperature", -1.0), ("top_p", 1.5), ("top_k", -1), ("repetition_penalty", 0.0)):
        with pytest.raises(UnituneError) as flag_error:
            check_value(name, value)
        with pytest.raises(pydantic.ValidationError) as request_error:
            ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **{name: value})
        assert request_error.value.errors()[0]["loc"] == (name,)
        bound = request_error.value.errors()[0]["msg"].replace("Input should be", "must be")
        assert str(flag_error.value).endswith(bound)

"""server.py driven through a pseudo-terminal (pexpect), as a person would use it."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "models" / "unitune-tiny"
PROMPT_RE = r"----- prompt \((\d+) tokens\) -----\r?\n(.*?)\r?\n----- end of prompt -----"


def spawn(model_dir: Path, *flags: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, [str(REPO / "server.py"), "--model_name_or_path", str(model_dir), *flags],
                          cwd=str(REPO), env=env, encoding="utf-8", timeout=90, dimensions=(50, 400))
    child.expect("User: ")
    return child


def turn(child, message: str) -> tuple[str, str]:
    """Send one message; (prompt the model got, reply shown) once the next 'User: ' appears."""
    child.sendline(message)
    child.expect(PROMPT_RE)
    prompt = child.match.group(2).replace("\r\n", "\n")
    child.expect("Assistant: ")
    child.expect(r"\r?\nUser: ")
    return prompt, child.before.replace("\r\n", "\n")


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return EMBEDDED if (EMBEDDED / "config.json").is_file() else tiny_model("llama")


def test_history_clear_exit(model_dir):
    child = spawn(model_dir, "--verbose", "--max_new_tokens", "12")
    try:
        first_prompt, first_reply = turn(child, "My name is Ada Lovelace.")
        assert "My name is Ada Lovelace." in first_prompt
        second_prompt, _ = turn(child, "What is my name?")
        # turn 2 is built from turn 1: the user's words and the model's reply, in template order
        assert first_prompt in second_prompt
        assert second_prompt.index("My name is Ada Lovelace.") < second_prompt.index("What is my name?")
        if first_reply.strip():
            assert first_reply.strip() in second_prompt
        child.sendline("clear")
        child.expect(r"\(history cleared\)")
        child.expect("User: ")
        third_prompt, _ = turn(child, "What is my name?")
        assert "Ada" not in third_prompt and "What is my name?" in third_prompt
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


@pytest.fixture(scope="module")
def endless_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny llama, told by its generation_config never to end a reply before 10,000 tokens."""
    out = tmp_path_factory.mktemp("endless")
    for item in Path(tiny_model("llama")).iterdir():
        shutil.copy(item, out / item.name)
    config = json.loads((out / "generation_config.json").read_text()) if (out / "generation_config.json").exists() \
        else {}
    (out / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": 10000}))
    return out


def test_ctrl_c_interrupts_only_the_reply(endless_model):
    child = spawn(endless_model, "--verbose", "--max_new_tokens", "200", "--cutoff_len", "100")
    try:
        child.sendline("Tell me a very long story.")
        child.expect("Assistant: ")
        child.expect(r"\S")  # the reply has started streaming
        child.sendintr()
        child.expect(r"\[interrupted")
        child.expect("User: ")  # the session is still alive
        prompt, _ = turn(child, "Another question.")
        assert "long story" not in prompt  # the interrupted turn was not kept
        assert re.search(r"Another question\.", prompt)
        child.sendline("stop")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

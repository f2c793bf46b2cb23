"""server.py driven through a pseudo-terminal (pexpect), as a person would use it."""

from __future__ import annotations

import os
import re
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


def turn(child, message: str) -> tuple[str, str, int, str]:
    """Send one message; (prompt the model got, reply shown, prompt tokens, notices before the prompt)."""
    child.sendline(message)
    child.expect(PROMPT_RE)
    notices, n_tokens = child.before, int(child.match.group(1))
    prompt = child.match.group(2).replace("\r\n", "\n")
    child.expect("Assistant: ")
    child.expect(r"\r?\nUser: ")
    return prompt, child.before.replace("\r\n", "\n"), n_tokens, notices


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return EMBEDDED if (EMBEDDED / "config.json").is_file() else tiny_model("llama")


def test_history_clear_cutoff_exit(model_dir):
    cutoff = 160
    child = spawn(model_dir, "--verbose", "--max_new_tokens", "12", "--cutoff_len", str(cutoff))
    try:
        first_prompt, first_reply, _, _ = turn(child, "My name is Ada Lovelace.")
        assert "My name is Ada Lovelace." in first_prompt
        second_prompt, _, _, _ = turn(child, "What is my name?")
        # turn 2 is built from turn 1: the user's words and the model's reply, in template order
        assert first_prompt in second_prompt
        assert second_prompt.index("My name is Ada Lovelace.") < second_prompt.index("What is my name?")
        if first_reply.strip():
            assert first_reply.strip() in second_prompt

        child.sendline("clear")
        child.expect(r"\(history cleared\)")
        child.expect("User: ")
        third_prompt, _, _, _ = turn(child, "What is my name?")
        assert "Ada" not in third_prompt and "What is my name?" in third_prompt

        # the history grows until --cutoff_len forces the oldest turns out
        sent = ["What is my name?"]
        for i in range(8):
            sent.append(f"Tell me about the quick brown fox number {i}.")
            prompt, _, n_tokens, notices = turn(child, sent[-1])
            assert n_tokens <= cutoff
            if "oldest turn" in notices:
                break
        else:
            pytest.fail("the history never reached --cutoff_len")
        assert sent[0] not in prompt and sent[-2] in prompt and sent[-1] in prompt
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


@pytest.fixture(scope="module")
def endless_model(model_dir, tmp_path_factory) -> Path:
    """The chat model, told by its generation_config never to end a reply early (so Ctrl-C lands mid-reply)."""
    from tests.test_web import endless_copy

    return endless_copy(model_dir, tmp_path_factory.mktemp("endless") / model_dir.name)


def test_ctrl_c_interrupts_only_the_reply(endless_model):
    child = spawn(endless_model, "--verbose", "--max_new_tokens", "200")
    try:
        child.sendline("Tell me a very long story.")
        child.expect("Assistant: ")
        child.expect(r"\S")  # the reply has started streaming
        child.sendintr()
        child.expect(r"\[interrupted")
        child.expect("User: ")  # the session is still alive
        prompt, _, _, _ = turn(child, "Another question.")
        assert "long story" not in prompt  # the interrupted turn was not kept
        assert re.search(r"Another question\.", prompt)
        child.sendline("stop")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_stream_equals_batch_stops_and_cancels(model_dir):
    """The streaming generator both front-ends use: same text as generate_batch, stop strings, cancellation."""
    from unitune.args import ModelArgs
    from unitune.generation import generate_batch, stream_generate
    from unitune.loader import load

    loaded = load(ModelArgs(model_name_or_path=str(model_dir)), mode="infer")
    model, tok = loaded.model, loaded.tokenizer
    prompt = loaded.template.prompt_for("Tell me about the quick brown fox.")
    plain = generate_batch(model, tok, [prompt], max_new_tokens=40)[0]
    stream = stream_generate(model, tok, prompt, 40)
    assert "".join(stream) == plain and stream.completion_tokens <= 40

    if len(plain) > 6:  # a stop string taken from the middle of the answer: both cut there, none leaks
        stop = plain[len(plain) // 2:len(plain) // 2 + 3]
        cut = generate_batch(model, tok, [prompt], max_new_tokens=40, stops=[stop])[0]
        stream = stream_generate(model, tok, prompt, 40, stops=[stop])
        pieces = list(stream)
        assert "".join(pieces) == cut and stop not in "".join(pieces) and stream.finish_reason == "stop"

    stream = stream_generate(model, tok, prompt, 200, min_new_tokens=200)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        stream.cancel()  # from the first piece on: generate() stops at its next step
    assert stream.finish_reason == "cancelled" and stream.completion_tokens < 200

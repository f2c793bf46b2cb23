"""--streaming: a corpus read and tokenized while training, never whole, resumed at the same data position.

There is no `--stage pt` yet: the stream feeds SFT, the one stage there is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unitune import train as T
from unitune.errors import UnituneError

CORPUS_RECORDS = 200_000
BAD_LINE = 150_000  # far past what 6 steps read: a run that read the whole corpus would stop here


@pytest.fixture(scope="module")
def tiny_llama(tiny_model) -> Path:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """200,000 distinct records (more than this test lets a run hold: it trains on 12 of them), with an invalid
    line deep inside that only a run reading everything would meet."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(1, CORPUS_RECORDS + 1):
            if i == BAD_LINE:
                fh.write("{not json\n")
                continue
            fh.write(json.dumps({"instruction": f"Add {i} and {i % 97}." + " Think." * (i % 7), "input": "",
                                 "output": f"{i} + {i % 97} = {i + i % 97}"}) + "\n")
    return path


def argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--data", str(data), "--output_dir", str(out), "--streaming",
            "--max_steps", "6", "--save_steps", "3", "--buffer_size", "16", "--per_gpu_train_batch_size", "2",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--cutoff_len", "64", "--lora_r", "4",
            "--seed", "3", "--eval_base", "false", "--cache_dir", str(out.parent / "cache"), *extra]


def logged(out: Path) -> dict[int, tuple[float, int]]:
    """step -> (loss, non-padding input tokens seen so far), from the run's loss log."""
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["num_input_tokens_seen"]) for r in rows if "loss" in r}


def test_streamed_run_trains_and_resumes_at_the_same_position(tiny_llama, corpus, tmp_path):
    whole = tmp_path / "whole"
    result = T.run(argv(tiny_llama, corpus, whole))
    assert result["final_loss"] == result["final_loss"]  # trained: a finite loss, never the bad line
    uninterrupted = logged(whole)
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "cache").exists()  # read as it trained: nothing tokenized ahead into a cache

    # the same run stopped after step 3: its checkpoint, without anything written later
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-3", resumed / "checkpoint-3")
    T.run(argv(tiny_llama, corpus, resumed, "--resume_from_checkpoint"))
    after = logged(resumed)
    # steps 4-6 saw exactly the batches the uninterrupted run saw there: the same tokens, the same losses
    for step in (4, 5, 6):
        assert after[step][1] == uninterrupted[step][1], step
        assert after[step][0] == pytest.approx(uninterrupted[step][0], abs=1e-3), step
    # a resume that restarted the stream would show the first batches' token counts again: it would be caught
    def tokens(log: dict, step: int) -> int:
        return log[step][1] - log.get(step - 1, (0, 0))[1]

    assert [tokens(uninterrupted, s) for s in (1, 2, 3)] != [tokens(after, s) for s in (4, 5, 6)]


def test_streaming_flags_are_checked_before_the_model_loads(tiny_llama, corpus, tmp_path):
    base = argv(tiny_llama, corpus, tmp_path / "out")
    without_steps = [a for a in base if a not in ("--max_steps", "6")]
    with pytest.raises(UnituneError, match="--streaming .* give --max_steps"):
        T.run(without_steps)
    with pytest.raises(UnituneError, match="--val_set_size .* --streaming"):
        T.run(base + ["--val_set_size", "4"])
    with pytest.raises(UnituneError, match="--packing .* --streaming"):
        T.run(base + ["--packing"])
    with pytest.raises(UnituneError, match="--buffer_size 0: must be at least 1"):
        T.run(base + ["--buffer_size", "0"])
    assert not (tmp_path / "out").exists()

"""Packing without cross-contamination, and a loss that does not depend on how the batch is split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from unitune import train as T  # noqa: E402
from unitune.errors import UnituneError  # noqa: E402
from unitune.packing import PackedCollator, PackedRows, isolation_error, join, pack  # noqa: E402

RECORDS = [{"instruction": f"Add {i} and {i * 3 + 1}." + " Think step by step." * (i % 4), "input": "",
            "output": f"{i} + {i * 3 + 1} = {4 * i + 1}. Answer: {4 * i + 1}"} for i in range(16)]


@pytest.fixture(scope="module")
def llama(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model("llama")
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def examples(llama):
    from unitune import data as D
    from unitune.templates import get_template

    _, _, tok = llama
    return [D.encode(tok, get_template("alpaca"), D.normalize(r, f"record {i}"), 128, False)
            for i, r in enumerate(RECORDS)]


def test_packed_logits_equal_unpacked_and_a_leaky_row_is_caught(llama, examples):
    _, model, _ = llama
    assert isolation_error(model, examples[:4]) < 1e-4
    # the same row with positions that do not restart lets every example see the ones before it
    row = join(examples[:4])
    with torch.no_grad():
        leaky = model(input_ids=torch.tensor([row["input_ids"]]),
                      position_ids=torch.arange(len(row["input_ids"]))[None], use_cache=False).logits
        first = len(examples[0]["input_ids"])
        second = torch.tensor([examples[1]["input_ids"]])
        alone = model(input_ids=second, attention_mask=torch.ones_like(second)).logits
    assert (leaky[0, first:first + second.shape[1]] - alone[0]).abs().max() > 1e-2


def test_rows_hold_every_example_once_within_capacity(examples):
    rows = pack(examples, 512)
    assert sorted(n for row in rows for n in row["lengths"]) == sorted(len(e["input_ids"]) for e in examples)
    assert all(len(row["input_ids"]) <= 512 for row in rows) and len(rows) < len(examples)
    batch = PackedCollator(0)(rows[:2])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape


def test_packed_loss_is_the_unpacked_loss_over_the_same_tokens(llama, examples):
    """One forward over packed rows gives the token-mean loss of the same examples run padded and unpacked."""
    from unitune.data import Collator

    _, model, tok = llama
    unpacked = Collator(tok.pad_token_id)(examples[:6])
    packed = PackedCollator(tok.pad_token_id)(pack(examples[:6], 512))
    with torch.no_grad():
        a = model(**unpacked, use_cache=False).loss
        b = model(**packed, use_cache=False).loss
    assert torch.isfinite(a) and abs(a.item() - b.item()) < 1e-4


def test_labelled_rows_loss_equals_the_models_own_loss_and_gradients(tiny_model):
    """The LM head on labelled positions only: the model's own loss and LoRA gradients, mean and summed over a
    given token count, on unpacked (right-padded) and packed batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune import data as D
    from unitune.loss import labelled_rows_loss
    from unitune.templates import get_template

    path = tiny_model("llama")
    tok = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    examples = [D.encode(tok, get_template("alpaca"), D.normalize(r, "r"), 128, False) for r in RECORDS[:5]]
    batches = [D.Collator(tok.pad_token_id)(examples), PackedCollator(tok.pad_token_id)(pack(examples, 256))]

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    for batch in batches:
        for items in (None, torch.tensor(1000)):
            extra = {} if items is None else {"num_items_in_batch": items}
            own, own_grads = loss_and_grads(lambda b=batch, e=extra: model(**b, use_cache=False, **e).loss)
            ours, our_grads = loss_and_grads(lambda b=batch, n=items: labelled_rows_loss(
                model, model.get_output_embeddings(), b, n))
            assert abs(own - ours) < 1e-6, (own, ours)
            assert max((a - b).abs().max().item() for a, b in zip(own_grads, our_grads)) < 1e-6


def _step_losses(tiny_path: Path, data: Path, out: Path, *flags: str) -> list[float]:
    T.run(["--model_name_or_path", str(tiny_path), "--data", str(data), "--output_dir", str(out),
           "--max_steps", "3", "--learning_rate", "1e-2", "--logging_steps", "1", "--cutoff_len", "512",
           "--lora_r", "4", "--lora_dropout", "0", "--eval_base", "false", "--cache_dir", str(out.parent / "c"),
           "--seed", "5", "--warmup_ratio", "0", *flags])
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return [h["loss"] for h in log if "loss" in h]


@pytest.mark.parametrize("packing", ["false", "true"])
def test_loss_does_not_depend_on_how_the_batch_is_split(llama, tmp_path, packing):
    """batch 8 x accumulation 1 and batch 2 x accumulation 4: the same per-step losses (the mean over all
    response tokens of the step, not a mean of micro-batch means), so also the same updates; unpacked, and
    packed two examples a row (the loss then runs the LM head on labelled positions only)."""
    path, _, _ = llama
    data = tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    size = ["--packing", packing, "--compute_dtype", "fp32", "--cutoff_len", "128" if packing == "true" else "512"]
    whole = _step_losses(path, data, tmp_path / "a", "--per_gpu_train_batch_size", "8",
                         "--gradient_accumulation_steps", "1", *size)
    split = _step_losses(path, data, tmp_path / "b", "--per_gpu_train_batch_size", "2",
                         "--gradient_accumulation_steps", "4", *size)
    assert len(whole) == len(split) == 3
    assert all(abs(x - y) < 1e-4 for x, y in zip(whole, split)), (whole, split)


def test_packed_run_trains_and_prompt_learning_refuses_packing(llama, tmp_path):
    path, _, _ = llama
    data = tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    losses = _step_losses(path, data, tmp_path / "p", "--packing", "--per_gpu_train_batch_size", "2")
    assert len(losses) == 3 and all(x == x and x < 100 for x in losses)
    with pytest.raises(UnituneError, match="--packing cannot be used with --peft_type prefix"):
        T.run(["--model_name_or_path", str(path), "--data", str(data), "--peft_type", "prefix", "--packing",
               "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_group_by_length_batches_similar_lengths(llama, tmp_path):
    """--group_by_length: the Trainer's sampler puts examples of similar length in one batch, so a batch
    holds less padding than a random one."""
    from unitune.data import Collator

    path, _, _ = llama
    data = tmp_path / "train.json"
    # enough records for the sampler's mega-batches (it sorts by length within 4+ batches at a time)
    many = [{**r, "instruction": r["instruction"] + " Again." * (j % 5)} for j, r in enumerate(RECORDS * 6)]
    data.write_text(json.dumps(many))
    seen: list[int] = []
    original = Collator.__call__

    def counting(self, batch):
        out = original(self, batch)
        seen.append(int((out["attention_mask"] == 0).sum()))
        return out

    try:
        Collator.__call__ = counting
        _step_losses(path, data, tmp_path / "g", "--group_by_length", "--per_gpu_train_batch_size", "4",
                     "--packing", "false")
        grouped, seen[:] = list(seen), []
        _step_losses(path, data, tmp_path / "r", "--per_gpu_train_batch_size", "4", "--packing", "false")
    finally:
        Collator.__call__ = original
    assert sum(grouped) < sum(seen), (grouped, seen)


def test_best_fit_packs_every_example_once_as_tightly_as_first_fit_and_arrow_rows_equal_list_rows(examples):
    """best_fit places every example exactly once, within the row's capacity, into at most one row more than
    first-fit decreasing scanning every row, and within 1% of the token count's lower bound; the Arrow dataset that
    unitune.data.prepare gives packs into exactly the rows of the same examples as a list."""
    import math
    import random

    from datasets import Dataset

    from unitune.packing import best_fit

    rng = random.Random(0)
    for capacity, longest in ((128, 120), (128, 40), (64, 3)):
        lengths = [rng.randint(1, longest) for _ in range(3000)]
        free: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # first-fit decreasing, row by row
            slot = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
            if slot is None:
                free.append(capacity - lengths[i])
            else:
                free[slot] -= lengths[i]
        rows = best_fit(lengths, capacity)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert max(sum(lengths[i] for i in row) for row in rows) <= capacity
        bound = math.ceil(sum(lengths) / capacity)
        assert bound <= len(rows) <= min(len(free) + 1, 1.01 * bound + 1), (len(rows), len(free), bound)
    arrow = Dataset.from_list([{**e, "length": len(e["input_ids"])} for e in examples])
    lazy = pack(arrow, 256)  # joined when read: no Python lists of every row's tokens up front
    assert isinstance(lazy, PackedRows) and [lazy[i] for i in range(len(lazy))] == pack(examples, 256)
    chosen = list(range(len(examples)))[::-2]  # a split's rows: an index mapping over the Arrow table
    part = pack(arrow.select(chosen), 256)
    assert [part[i] for i in range(len(part))] == pack([examples[i] for i in chosen], 256)

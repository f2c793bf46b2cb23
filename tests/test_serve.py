"""The serving engine (unitune/serve): continuous batching gives every request what it gets alone (issue 12).

In-process tests drive unitune.serve.engine.Engine on the embedded default model: requests joining and
leaving a running batch, per-request sampling settings and seeds, stop strings, usage counts, the bounded
queue, cancellation, and the requests that run alone (beam and contrastive search, unbatchable caches).
The last test is the acceptance test through HTTP: 8 concurrent greedy requests to web.py return exactly
what each returns alone while a ninth client hangs up mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tests.test_web import chat_model_dir, serve

QUESTIONS = ["Add 3 and 4.", "Reverse the list [1, 2, 3].", "What is 12 times 7?",
             "Extract triples: Paris is the capital of France.", "把 5 和 8 相加。", "Sort the words: pear apple fig.",
             "Count the letters in banana.", "hi"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from unitune.args import ModelArgs
    from unitune.loader import load

    return load(ModelArgs(model_name_or_path=str(chat_model_dir(tiny_model))), mode="infer")


@pytest.fixture(scope="module")
def engine(loaded):
    from unitune.serve.engine import Engine

    engine = Engine(loaded, max_queue=8, max_batch_size=16)
    yield engine
    engine.close()


def prompt(loaded, question: str) -> str:
    return loaded.template.prompt_for(question, "", [], None)


def job(loaded, question: str, max_new_tokens: int = 24, **kwargs):
    from unitune.serve.engine import Job

    kwargs.setdefault("stops", loaded.template.stop)
    return Job(prompt(loaded, question), max_new_tokens, **kwargs)


def outcome(job, text: str) -> tuple:
    return text, job.prompt_tokens, job.completion_tokens, job.finish_reason


def together(engine, jobs: list) -> list[tuple]:
    """Submit every job at once and wait for all: they run in one batch."""
    async def main():
        for j in jobs:
            engine.submit(j)
        texts = await asyncio.gather(*(j.text() for j in jobs))
        return [outcome(j, t) for j, t in zip(jobs, texts)]

    return asyncio.run(main())


def alone(engine, make) -> list[tuple]:
    """Each job by itself, one after the other (make() builds fresh jobs: a Job runs once)."""
    return [together(engine, [j])[0] for j in make()]


def test_concurrent_greedy_requests_equal_alone_and_generate(engine, loaded):
    from unitune.generation import generate_batch

    def make():
        return [job(loaded, q, 16 + 4 * i) for i, q in enumerate(QUESTIONS)]

    solo = alone(engine, make)
    batched = together(engine, make())
    assert batched == solo
    assert engine.largest_batch == len(QUESTIONS)
    # and both are what generate() gives (the shared generation module), usage included
    tok = loaded.tokenizer
    for i, (q, (text, prompt_tokens, completion_tokens, _)) in enumerate(zip(QUESTIONS, solo)):
        expected = generate_batch(loaded.model, tok, [prompt(loaded, q)], 16 + 4 * i, stops=loaded.template.stop)[0]
        assert text == expected
        assert prompt_tokens == len(tok(prompt(loaded, q))["input_ids"]) and 1 <= completion_tokens <= 16 + 4 * i


def test_requests_join_and_leave_a_running_batch(engine, loaded):
    """A long request is running; others join mid-way, some finish and leave before it: nobody's text changes."""
    def make():
        return ([job(loaded, QUESTIONS[0], 60, gen_kwargs={"min_new_tokens": 60})]
                + [job(loaded, q, n) for q, n in zip(QUESTIONS[1:4], (6, 30, 12))])

    solo = alone(engine, make)

    async def main():
        first, *late = make()
        engine.submit(first)
        pieces = first.pieces()
        head = [await pieces.__anext__() for _ in range(3)]  # it is generating
        for j in late:
            engine.submit(j)
        late_texts = asyncio.gather(*(j.text() for j in late))
        text = "".join(head) + "".join([p async for p in pieces])
        return [outcome(first, text)] + [outcome(j, t) for j, t in zip(late, await late_texts)]

    assert asyncio.run(main()) == solo
    assert solo[0][2] == 60 and solo[1][2] <= 6  # the long one ran past the short ones' end


def test_per_request_sampling_settings_and_seeds(engine, loaded):
    """Greedy, seeded sampling, repetition penalty, top-k and min_new_tokens side by side in one batch: each row
    decodes by its own settings, as generate() would for that request alone."""
    import torch

    from unitune.generation import cut_at_stop, generate_ids, whole_text

    settings = [{}, {"do_sample": True, "temperature": 0.9, "top_p": 0.8}, {"repetition_penalty": 1.8},
                {"do_sample": True, "top_k": 5}, {"min_new_tokens": 20}, {"no_repeat_ngram_size": 2}]
    seeds = [None, 7, None, 11, None, None]

    def make():
        return [job(loaded, QUESTIONS[1], 20, gen_kwargs=s, seed=seed) for s, seed in zip(settings, seeds)]

    solo = alone(engine, make)
    assert together(engine, make()) == solo
    tok = loaded.tokenizer
    ids = tok(prompt(loaded, QUESTIONS[1]), return_tensors="pt")
    for s, seed, (text, *_rest) in zip(settings, seeds, solo):
        if seed is not None:
            torch.manual_seed(seed)
        out = generate_ids(loaded.model, dict(ids), 20, tok.pad_token_id, tok.eos_token_id, **{"do_sample": False, **s})
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        assert text == cut_at_stop(whole_text(tok, new), loaded.template.stop).strip(), s
    assert len({text for text, *_ in solo}) >= 4  # the settings made a difference
    other_seed = together(engine, [job(loaded, QUESTIONS[1], 20, gen_kwargs=settings[1], seed=8)])[0]
    assert other_seed[0] != solo[1][0]


def test_stop_strings_and_logprobs_per_request(engine, loaded):
    plain = alone(engine, lambda: [job(loaded, QUESTIONS[2], 30)])[0][0]
    cut_at = plain.index(" ", 5)
    stop = plain[cut_at:cut_at + 4]
    jobs = [job(loaded, QUESTIONS[2], 30, stops=(*loaded.template.stop, stop)), job(loaded, QUESTIONS[2], 30),
            job(loaded, QUESTIONS[2], 30, logprobs=2)]
    (cut, _, _, reason), (full, *_), (scored, _, scored_tokens, _) = together(engine, jobs)
    assert cut == plain[:cut_at].rstrip() and reason == "stop"
    assert full == plain == scored
    assert len(jobs[2].entries) == scored_tokens and all(len(top) == 2 for _, _, top in jobs[2].entries)
    assert all(token == top[0][0] for token, _, top in jobs[2].entries)  # greedy: the most likely one
    assert jobs[0].entries == [] and jobs[1].entries == []


def test_cancelling_one_request_leaves_the_others(engine, loaded):
    def make():
        return [job(loaded, q, 30) for q in QUESTIONS[:3]]

    solo = alone(engine, make)
    before = dict(engine.counts)

    async def main():
        leaver = engine.submit(job(loaded, QUESTIONS[4], 300, gen_kwargs={"min_new_tokens": 300}))
        jobs = [engine.submit(j) for j in make()]
        stream = leaver.pieces()
        await stream.__anext__()
        await stream.aclose()  # the client leaves: its job is cancelled
        return [outcome(j, t) for j, t in zip(jobs, await asyncio.gather(*(j.text() for j in jobs)))]

    assert asyncio.run(main()) == solo
    for _ in range(100):
        if engine.counts["cancelled"] == before["cancelled"] + 1:
            break
        time.sleep(0.02)
    assert engine.counts["cancelled"] == before["cancelled"] + 1
    assert engine.counts["finished"] == before["finished"] + 3 and engine.counts["failed"] == before["failed"]


def test_beam_and_contrastive_search_run_alone_beside_the_batch(engine, loaded):
    """Decodings that keep several candidates per sequence cannot share the batch's steps: they wait for it to
    drain and run by themselves through generate(), and the requests around them are unchanged."""
    from unitune.generation import generate_batch

    searches = [{"num_beams": 3}, {"penalty_alpha": 0.6, "top_k": 4}]

    def make():
        return ([job(loaded, q, 16) for q in QUESTIONS[:2]] + [job(loaded, QUESTIONS[5], 16, gen_kwargs=s)
                                                               for s in searches] + [job(loaded, QUESTIONS[3], 16)])

    solo = alone(engine, make)
    assert together(engine, make()) == solo
    for s, (text, *_rest) in zip(searches, solo[2:4]):
        assert text == generate_batch(loaded.model, loaded.tokenizer, [prompt(loaded, QUESTIONS[5])], 16,
                                      stops=loaded.template.stop, **s)[0]


def test_full_queue_is_503(loaded):
    from unitune.serve.engine import ApiError, Engine

    engine = Engine(loaded, max_queue=1, max_batch_size=2)
    try:
        async def main():
            running = [engine.submit(job(loaded, q, 200, gen_kwargs={"min_new_tokens": 200})) for q in QUESTIONS[:2]]
            waiting = engine.submit(job(loaded, QUESTIONS[2], 5))
            with pytest.raises(ApiError) as refused:
                engine.submit(job(loaded, QUESTIONS[3], 5))
            assert refused.value.status == 503 and refused.value.code == "queue_full"
            for j in running:
                j.cancel.set()
            text = await waiting.text()
            return text, waiting.completion_tokens

        text, tokens = asyncio.run(main())
        assert text and 1 <= tokens <= 5
    finally:
        engine.close()


def test_a_model_whose_cache_cannot_be_batched_serves_one_at_a_time(tiny_model):
    """Mistral's sliding-window cache layers cannot be merged: its requests run alone, and are still answered."""
    from unitune.args import ModelArgs
    from unitune.generation import generate_batch
    from unitune.loader import load
    from unitune.serve.engine import Engine, Job

    mistral = load(ModelArgs(model_type="mistral", model_name_or_path=str(tiny_model("mistral"))), mode="infer")
    engine = Engine(mistral, max_batch_size=4)
    try:
        texts = together(engine, [Job(p, 8, strip=False) for p in ("Once", "The quick")])
        assert engine.batchable is False and engine.largest_batch <= 1
        expected = [generate_batch(mistral.model, mistral.tokenizer, [p], 8) for p in ("Once", "The quick")]
        assert [t[0].strip() for t in texts] == [e[0] for e in expected]
    finally:
        engine.close()


# ---------------------------------------------------------------- acceptance, through web.py's HTTP API
@pytest.fixture(scope="module")
def batch_server(tiny_model):
    with serve(chat_model_dir(tiny_model), "--max_batch_size", "16", "--max_queue", "8") as url:
        yield url


def _stream_chat(url: str, question: str, max_tokens: int, start: threading.Barrier | None = None) -> tuple:
    """A streaming chat client: (text, finish_reason, usage) once its stream ended with [DONE]."""
    import httpx

    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if start is not None:
        start.wait()
    text, finish, usage, done = "", None, None, False
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120, trust_env=False) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
                finish = chunk["choices"][0]["finish_reason"] or finish
            usage = chunk.get("usage") or usage
    assert done, f"the stream of {question!r} broke off"
    return text, finish, usage


def test_eight_concurrent_greedy_requests_equal_alone_while_one_client_leaves(batch_server):
    import httpx

    url = batch_server
    asks = [(q, 16 + 4 * i) for i, q in enumerate(QUESTIONS)]
    solo = [_stream_chat(url, q, n) for q, n in asks]
    assert all(finish in ("stop", "length") and usage["completion_tokens"] >= 1 for _, finish, usage in solo)
    before = httpx.get(f"{url}/health", trust_env=False, timeout=10).json()

    start = threading.Barrier(len(asks) + 1)
    results: dict = {}
    ended: dict = {}  # when each client's stream ended
    left = threading.Event()

    def leaver():
        body = {"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "stream": True}
        start.wait()
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120, trust_env=False) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            for _ in range(3):
                next(lines)  # it is streaming among the others
        left.set()  # leaving the block closes the connection mid-stream
        ended["left"] = time.monotonic()

    def client(i, q, n):
        try:
            results[i] = _stream_chat(url, q, n, start)
        except BaseException as err:  # reported by the assertion below
            results[i] = err
        ended[i] = time.monotonic()

    threads = [threading.Thread(target=client, args=(i, q, n)) for i, (q, n) in enumerate(asks)]
    threads.append(threading.Thread(target=leaver))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert left.is_set() and ended["left"] < max(ended[i] for i in range(len(asks)))  # it left mid-batch
    assert [results[i] for i in range(len(asks))] == solo  # text, finish_reason and usage, token for token
    for _ in range(50):
        after = httpx.get(f"{url}/health", trust_env=False, timeout=10).json()
        if after["cancelled"] == before["cancelled"] + 1:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1, "the client that left was not cancelled"
    assert after["finished"] == before["finished"] + len(asks) and after["failed"] == before["failed"]
    assert after["largest_batch"] >= 4, after  # they really ran together


@pytest.mark.parametrize("family", ["qwen2", "bloom", "auto", "internlm"])
def test_other_families_batch_to_the_same_greedy_tokens(tiny_model, family):
    """Rotary (Qwen2, Phi-3, InternLM) and ALiBi (Bloom, positions from the mask) models: batched = alone."""
    from unitune.args import ModelArgs
    from unitune.loader import load
    from unitune.serve.engine import Engine, Job

    model = load(ModelArgs(model_type=family, model_name_or_path=str(tiny_model(family))), mode="infer")
    engine = Engine(model, max_batch_size=8)
    try:
        def make():
            return [Job(p, 6 + 3 * i, strip=False) for i, p in enumerate(("Once", "The quick brown fox", "中文",
                                                                          "Add the numbers. Answer:"))]

        solo = alone(engine, make)
        assert together(engine, make()) == solo
        assert engine.batchable and engine.largest_batch == 4
    finally:
        engine.close()

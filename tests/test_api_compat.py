"""web.py as a demanding OpenAI-API user meets it (issue 10): a started server, the `openai` client and httpx.

Bounded request fields (never a 500), an empty prompt, model names, /v1/models/{id} and unknown /v1 paths,
logprobs, refused options, text cut at stop strings and at max_tokens, and a client that leaves a
non-streaming request while tokens flow. Ends with a property-based test over request bodies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.test_web import chat_model_dir, serve


def variant(model_dir: Path, out: Path, config: dict | None = None, generation: dict | None = None,
            no_bos: bool = False) -> Path:
    """`model_dir` (files linked, not copied) with some config / generation_config values changed, or a tokenizer
    that adds no BOS token (as Qwen's and many real chat models' tokenizers do)."""
    out.mkdir(parents=True, exist_ok=True)
    changed = {"config.json": config, "generation_config.json": generation, "tokenizer.json": no_bos or None}
    for item in Path(model_dir).iterdir():
        if not changed.get(item.name):
            (out / item.name).symlink_to(item.resolve())
    for name, values in (("config.json", config), ("generation_config.json", generation)):
        if values:
            (out / name).write_text(json.dumps({**json.loads((Path(model_dir) / name).read_text()), **values}))
    if no_bos:
        tokenizer = json.loads((Path(model_dir) / "tokenizer.json").read_text())
        tokenizer["post_processor"] = None
        (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return out


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return variant(chat_model_dir(tiny_model), tmp_path_factory.mktemp("api") / "chat-model", no_bos=True)


@pytest.fixture(scope="module")
def server(model_dir):
    with serve(model_dir, "--max_new_tokens", "8", "--max_queue", "4") as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server, timeout=60, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    import httpx
    import openai

    with httpx.Client(trust_env=False, timeout=60) as transport:
        yield openai.OpenAI(base_url=f"{server}/v1", api_key="none", http_client=transport, max_retries=0)


@pytest.fixture(scope="module")
def model_id(model_dir):
    return model_dir.name


HI = [{"role": "user", "content": "Say hello to Alice."}]


# ---------------------------------------------------------------- item 3: every field bounded, empty prompt
@pytest.mark.parametrize("field, value", [
    ("seed", 2**70), ("seed", -(2**70)), ("top_k", 10**30), ("repetition_penalty", 1e-300),
    ("repetition_penalty", 1e300), ("top_logprobs", 50), ("max_tokens", 2**70),
])
def test_out_of_range_fields_are_400_naming_the_field(client, model_id, field, value):
    import openai

    extra = {"logprobs": True} if field == "top_logprobs" else {}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=HI, max_tokens=4, extra_body={field: value, **extra})
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == field and caught.value.body["type"] == "invalid_request_error"


def test_extreme_but_valid_values_answer(client, model_id):
    """A seed at the int64 edge, and a temperature so small it means greedy, are answered, not a 500."""
    greedy = client.chat.completions.create(model=model_id, messages=HI, max_tokens=6, temperature=0)
    for extra in ({"seed": 2**63 - 1, "temperature": 0.8}, {"seed": -(2**63)}, {"temperature": 1e-300}):
        out = client.chat.completions.create(model=model_id, messages=HI, max_tokens=6, **extra)
        assert out.choices[0].finish_reason in ("stop", "length")
    tiny = client.chat.completions.create(model=model_id, messages=HI, max_tokens=6, temperature=1e-300)
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


def test_empty_prompt_generates_from_bos(client, model_id, model_dir):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(model_dir)("")["input_ids"] == []  # the case that crashed
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(model=model_id, prompt="", max_tokens=5, stream=True,
                                                    stream_options={"include_usage": True}))
            usage, text = chunks[-1].usage, "".join(c.choices[0].text for c in chunks if c.choices)
        else:
            out = client.completions.create(model=model_id, prompt="", max_tokens=5)
            usage, text = out.usage, out.choices[0].text
        assert usage.prompt_tokens == 1 and 1 <= usage.completion_tokens <= 5 and isinstance(text, str)
    two = client.completions.create(model=model_id, prompt=["", "Once"], max_tokens=3)
    assert [c.index for c in two.choices] == [0, 1]


# ---------------------------------------------------------------- item 10: OpenAI compatibility
def test_unknown_model_is_404_model_not_found(client, model_id):
    import openai

    for call in (lambda m: client.chat.completions.create(model=m, messages=HI, max_tokens=2),
                 lambda m: client.completions.create(model=m, prompt="Hi", max_tokens=2)):
        with pytest.raises(openai.NotFoundError) as caught:
            call("gpt-4o")
        assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
        call(model_id)  # the served name works


@pytest.fixture(scope="module")
def tiny_server(tiny_model):
    """web.py on a random tiny llama, started with --accept_any_model."""
    with serve(tiny_model("llama"), "--accept_any_model", "--max_new_tokens", "8") as url:
        yield url


def test_accept_any_model_flag(tiny_server, tiny_model):
    import httpx

    r = httpx.post(f"{tiny_server}/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, trust_env=False,
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == tiny_model("llama").name  # the response says which model really answered


def test_model_retrieve_and_unknown_paths(client, http, model_id):
    import openai

    card = client.models.retrieve(model_id)
    assert card.id == model_id and card.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"
    for method, path in (("GET", "/v1/no/such/route"), ("POST", "/v1/embeddings"), ("GET", "/v1/models/a/b")):
        r = http.request(method, path, json={})
        assert r.status_code == 404, (path, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


def test_generate_route_names_its_own_fields(http, server):
    long = "word " * 3000  # longer than any --cutoff_len default
    r = http.post("/generate", json={"instruction": long})
    assert r.status_code == 400 and r.json()["error"]["param"] == "instruction", r.text
    r = http.post("/generate", json={"instruction": "Hi", "parameters": {"max_new_tokens": 100000}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "parameters.max_new_tokens", r.text


@pytest.mark.parametrize("field, value", [
    ("response_format", {"type": "json_object"}), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"), ("logit_bias", {"42": 5}), ("presence_penalty", 0.5), ("frequency_penalty", 1.0),
    ("modalities", ["text", "audio"]),
])
def test_unimplemented_options_are_refused(client, model_id, field, value):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=HI, max_tokens=2, extra_body={field: value})
    assert caught.value.body["param"] == field and "not supported" in caught.value.body["message"]


def test_harmless_values_of_unimplemented_options_are_accepted(client, model_id):
    out = client.chat.completions.create(model=model_id, messages=HI, max_tokens=2, response_format={"type": "text"},
                                         presence_penalty=0, frequency_penalty=0, tools=[], tool_choice="none")
    assert out.choices[0].message.content is not None


def test_chat_logprobs(client, model_id):
    import math

    out = client.chat.completions.create(model=model_id, messages=HI, max_tokens=8, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert bytes(entry.bytes).decode("utf-8", "replace") or entry.token
        # greedy: the token chosen is the most likely one, and the alternatives come in order
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-5)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace").strip().startswith(
        out.choices[0].message.content[:1])
    plain = client.chat.completions.create(model=model_id, messages=HI, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None
    chunks = list(client.chat.completions.create(model=model_id, messages=HI, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]


def test_completion_logprobs(client, model_id):
    out = client.completions.create(model=model_id, prompt="The quick brown fox", max_tokens=6, temperature=0,
                                    logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens
    assert all(len(top) <= 2 for top in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


# ---------------------------------------------------------------- item 8: how text is cut
def test_no_whitespace_kept_before_a_stop_string(client, model_id):
    """A stop string right after whitespace: the answer ends where the text does, as if never followed by it."""
    ask = [{"role": "user", "content": "Tell me about the quick brown fox and the lazy dog."}]
    full = client.chat.completions.create(model=model_id, messages=ask, max_tokens=60, temperature=0)
    text = full.choices[0].message.content
    starts = [j for j in range(1, len(text) - 6) if text[j - 1].isspace() and not text[j].isspace()
              and text[:j].strip() and text.find(text[j:j + 12]) == j]
    assert starts, f"no word after whitespace to stop at in {text!r}"
    for j in starts[:3]:
        stop = text[j:j + 12]
        expected = text[:j].rstrip()
        cut = client.chat.completions.create(model=model_id, messages=ask, max_tokens=60, temperature=0, stop=[stop])
        assert cut.choices[0].message.content == expected, (stop, cut.choices[0].message.content)
        chunks = client.chat.completions.create(model=model_id, messages=ask, max_tokens=60, temperature=0,
                                                stop=[stop], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_a_reply_cut_mid_character_never_ends_in_a_broken_one(tiny_model, tiny_server):
    """max_tokens can end a reply inside a multi-byte character: the reply ends before it, streamed or not.

    On a random tiny model, whose greedy replies are full of characters split over byte tokens."""
    import httpx
    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model("llama")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    cuts = []  # (prompt, max_tokens that cut a character, the clean text before that character)
    for prompt in ("Once", "中文", "The answer"):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            new = model.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id)
        new = new[0, ids.shape[1]:].tolist()
        for n in range(2, len(new) + 1):
            before = tok.decode(new[:n - 1], skip_special_tokens=True)
            if tok.decode(new[:n], skip_special_tokens=True).endswith("\ufffd") and "\ufffd" not in before:
                cuts.append((prompt, n, before))
    assert cuts, "no greedy reply here cuts a character in two: the test would prove nothing"
    with httpx.Client(trust_env=False, timeout=60) as transport:
        client = openai.OpenAI(base_url=f"{tiny_server}/v1", api_key="none", http_client=transport, max_retries=0)
        for prompt, n, before in cuts[:4]:
            out = client.completions.create(model=model_dir.name, prompt=prompt, max_tokens=n, temperature=0)
            assert out.choices[0].text == before, (prompt, n)
            assert out.usage.completion_tokens == n and out.choices[0].finish_reason == "length"
            chunks = list(client.completions.create(model=model_dir.name, prompt=prompt, max_tokens=n, temperature=0,
                                                    stream=True))
            assert "".join(c.choices[0].text for c in chunks if c.choices) == before, (prompt, n)


# ---------------------------------------------------------------- item 2: a client that leaves, tokens flowing
@pytest.fixture(scope="module")
def long_server(tiny_model, tmp_path_factory):
    """A model whose replies never end early and whose context holds tens of thousands of tokens: a request for
    30,000 tokens runs for minutes unless it is cancelled."""
    model = variant(chat_model_dir(tiny_model), tmp_path_factory.mktemp("long") / "long-model",
                    config={"max_position_embeddings": 40000}, generation={"min_new_tokens": 100000})
    with serve(model, "--cutoff_len", "256") as url:
        yield url


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 30000}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 30000}),
])
def test_non_streaming_client_that_leaves_frees_the_model(long_server, path, body):
    import httpx

    def health():
        return httpx.get(f"{long_server}/health", trust_env=False, timeout=10).json()

    before = health()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 2 s, while tokens are flowing
        httpx.post(long_server + path, json=body, trust_env=False, timeout=httpx.Timeout(60, read=2))
    left = time.monotonic()
    while health()["cancelled"] == before["cancelled"] and time.monotonic() - left < 5:
        time.sleep(0.05)
    assert health()["cancelled"] == before["cancelled"] + 1, "the job kept running after its client left"
    assert time.monotonic() - left <= 1.0, f"cancelled only {time.monotonic() - left:.2f} s after the client left"
    started = time.monotonic()  # the model is free: a small request is answered at once
    r = httpx.post(f"{long_server}/v1/chat/completions", json={"messages": HI, "max_tokens": 3}, trust_env=False,
                   timeout=30)
    assert r.status_code == 200 and time.monotonic() - started < 10


# ---------------------------------------------------------------- property: no request body is a 500
def _bodies():
    """A valid body with one or two fields replaced: by edge values (most of them valid, so that many requests
    reach generate()) or by junk of any JSON type."""
    from hypothesis import strategies as st

    junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4),
                     st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
    tokens = st.one_of(st.integers(1, 6), st.sampled_from([-1, 0, 10**7, 2**70]), junk)
    unit = st.one_of(st.sampled_from([0, 1e-300, 1e-6, 1, 2, 2.5, -1, 1e300]), st.floats(0, 2), junk)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "user", "assistant", "system", "tool"]),
                                     "content": st.one_of(text, text, st.lists(st.fixed_dictionaries(
                                         {"type": st.sampled_from(["text", "image_url"]), "text": text}), max_size=2),
                                         junk)})
    common = {
        "model": st.one_of(st.just("chat-model"), text, junk), "max_tokens": tokens,
        "temperature": unit, "top_p": unit,
        "top_k": st.one_of(st.integers(-2, 10**30), st.sampled_from([0, 1, 2]), junk),
        "repetition_penalty": unit, "presence_penalty": unit, "frequency_penalty": unit,
        "seed": st.one_of(st.sampled_from([2**63 - 1, -(2**63), 2**64, 2**70, -(2**70)]), st.integers(), junk),
        "stop": st.one_of(text, st.lists(text, max_size=5), junk), "ignore_eos": st.one_of(st.booleans(), junk),
        "stream": st.one_of(st.booleans(), junk), "n": st.one_of(st.integers(0, 3), junk), "logit_bias": junk,
        "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), junk)}
    chat = {**common, "messages": st.one_of(st.lists(message, min_size=1, max_size=4), junk),
            "max_completion_tokens": tokens, "logprobs": st.one_of(st.booleans(), junk),
            "top_logprobs": st.one_of(st.integers(0, 21), junk), "response_format": junk, "tools": junk}
    prompt = st.one_of(st.sampled_from(["", " ", "\n", ["", "x"]]), text, st.lists(text, max_size=3), junk)
    completion = {**common, "prompt": prompt,
                  "echo": st.one_of(st.booleans(), junk), "logprobs": st.one_of(st.integers(-1, 6), junk),
                  "suffix": junk, "best_of": st.one_of(st.integers(0, 3), junk)}

    def route(path: str, base: dict, fields: dict):
        # a shuffle, not sampled_from: derandomized draws of sampled_from favour the first names
        changes = st.permutations(sorted(fields)).map(lambda names: names[:2]).flatmap(
            lambda names: st.fixed_dictionaries({name: fields[name] for name in names}))
        return changes.map(lambda changed: (path, {**base, **changed}))

    return st.one_of(
        route("/v1/chat/completions", {"model": "chat-model", "messages": HI, "max_tokens": 4}, chat),
        route("/v1/completions", {"model": "chat-model", "prompt": "Once", "max_tokens": 4}, completion))


def test_no_request_body_is_a_500(http):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_bodies())
    def check(case):
        path, body = case
        r = http.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (path, body, r.status_code, r.text)
        assert "server_error" not in r.text, (path, body, r.text)  # streams report failures in-band
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text

    check()

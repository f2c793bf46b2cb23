"""web.py as a real subprocess on a free loopback port, spoken to with the official `openai` client and httpx.

One server for the whole file (loading gradio costs seconds): --api_key is set so every call carries the
key, and --max_batch_size 1 --max_queue 1 (one-at-a-time serving) so the queue limit is reached with three
requests. Batched serving is tested in tests/test_serve.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "models" / "unitune-tiny"
KEY = "test-key-123"


def chat_model_dir(tiny_model) -> Path:
    """The embedded default model where it has been built, else the session's tiny llama."""
    return EMBEDDED if (EMBEDDED / "config.json").is_file() else tiny_model("llama")


def endless_copy(model_dir: Path, out: Path, min_new_tokens: int = 10000) -> Path:
    """`model_dir` (linked, not copied) with a generation_config that never ends a reply early: for tests that
    must catch a reply while it is still streaming, whatever the model has learned."""
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(model_dir).iterdir():
        if item.name != "generation_config.json":
            (out / item.name).symlink_to(item.resolve())
    config_file = Path(model_dir) / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    (out / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": min_new_tokens}))
    return out


@contextlib.contextmanager
def serve(model_dir: Path, *flags: str, startup_s: float = 120):
    """Run web.py until the block ends; yields its base URL once /health answers (bench/serve_speed.py's
    launcher: one way to start a server and wait for it)."""
    from bench.serve_speed import web_server

    # one thread each: the CPU is shared and a tiny model only slows down with more
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with web_server(["--model_name_or_path", str(model_dir), *flags], threads, startup_s=startup_s) as url:
        yield url


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return chat_model_dir(tiny_model)


@pytest.fixture(scope="module")
def server(model_dir):
    with serve(model_dir, "--api_key", KEY, "--max_batch_size", "1", "--max_queue", "1") as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    import httpx
    import openai

    with httpx.Client(trust_env=False, timeout=60) as transport:
        yield openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, http_client=transport, max_retries=0)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_list(client, model_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [model_dir.name]
    assert models[0].object == "model"


def test_chat_stream_reassembles_to_the_greedy_answer(client, model_id):
    messages = [{"role": "user", "content": "Add the numbers 3 and 4."}]
    full = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=24)
    text = full.choices[0].message.content
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason in ("stop", "length")
    assert 1 <= full.usage.completion_tokens <= 24 and full.usage.prompt_tokens > 5
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=24,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_stream_include_usage(client, model_id):
    messages = [{"role": "user", "content": "Name a fox."}]
    full = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_history_and_system_reach_the_prompt(client, model_id):
    one = client.chat.completions.create(model=model_id, temperature=0, max_tokens=4,
                                         messages=[{"role": "user", "content": "And now?"}])
    three = client.chat.completions.create(model=model_id, temperature=0, max_tokens=4, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "My name is Ada Lovelace."},
        {"role": "assistant", "content": "Hello Ada."}, {"role": "user", "content": "And now?"}])
    assert three.usage.prompt_tokens > one.usage.prompt_tokens + 8


def test_api_key_required(server, client, model_id):
    import httpx
    import openai

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/generate")):
            r = httpx.request(method, server + path, headers=headers, json={}, trust_env=False, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    with httpx.Client(trust_env=False, timeout=30) as transport:
        wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="nope", http_client=transport, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (json.dumps({"messages": "hello"}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}).encode(), "top_p"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).encode(), "stream"),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), "messages.0.role"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}).encode(),
     "messages"),
])
def test_bad_chat_requests_are_400(http, body, param):
    r = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_bad_completion_and_generate_requests_are_400(http):
    for path, body in (("/v1/completions", {"prompt": 5}), ("/v1/completions", {"prompt": "x", "max_tokens": -1}),
                       ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}),
                       ("/generate", {"input": "no instruction"}),
                       ("/generate", {"instruction": "x", "parameters": {"max_new_tokens": -5}}),
                       ("/generate", {"instruction": "x", "parameters": {"temperature": "warm"}})):
        r = http.post(path, json=body)
        assert r.status_code == 400, (path, body, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], r.text
        if path == "/generate":
            assert r.json()["generated_text"] is None and r.json()["num_output_tokens"] == 0


def test_generate_route_matches_chat(http, client, model_id):
    r = http.post("/generate", json={"instruction": "Add the numbers.", "input": "",
                                     "parameters": {"max_new_tokens": 10, "temperature": 0}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"generated_text", "num_output_tokens", "error"} and out["error"] is None
    assert 1 <= out["num_output_tokens"] <= 10
    chat = client.chat.completions.create(model=model_id, temperature=0, max_tokens=10,
                                          messages=[{"role": "user", "content": "Add the numbers."}])
    assert out["generated_text"] == chat.choices[0].message.content
    with_input = http.post("/generate", json={"instruction": "Add the numbers.", "input": "3 4",
                                              "parameters": {"max_tokens": 3}}).json()
    assert with_input["error"] is None and with_input["num_output_tokens"] <= 3


def test_completions(client, model_id):
    full = client.completions.create(model=model_id, prompt="The quick brown fox", max_tokens=8, temperature=0)
    assert full.object == "text_completion" and full.usage.completion_tokens <= 8
    text = full.choices[0].text
    chunks = list(client.completions.create(model=model_id, prompt="The quick brown fox", max_tokens=8,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    echoed = client.completions.create(model=model_id, prompt="The quick brown fox", max_tokens=8, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == "The quick brown fox" + text
    two = client.completions.create(model=model_id, prompt=["The quick brown fox", "Add"], max_tokens=4,
                                    temperature=0)
    assert [c.index for c in two.choices] == [0, 1]


def _lines(response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def test_queue_limit_and_disconnect(server, http, model_dir):
    """A streams (running), B waits in the 1-slot queue, C is refused 503; A hangs up, B still completes."""
    import httpx

    window = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 512)
    before = http.get("/health").json()
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server, headers=auth, timeout=60, trust_env=False) as a_client, \
            httpx.Client(base_url=server, headers=auth, timeout=60, trust_env=False) as b_client:
        a = a_client.send(a_client.build_request("POST", "/v1/completions", json={
            "prompt": "Once", "max_tokens": min(400, window - 16), "ignore_eos": True, "stream": True}), stream=True)
        a_lines = _lines(a)
        assert json.loads(next(a_lines))["choices"][0]["text"] is not None  # A is generating
        b = b_client.send(b_client.build_request("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}), stream=True)
        b_lines = _lines(b)
        assert json.loads(next(b_lines))["choices"][0]["delta"]["role"] == "assistant"  # B is queued
        c = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert c.status_code == 503, c.text
        assert c.json()["error"]["type"] == "server_overloaded" and c.headers["retry-after"]
        a.close()  # the client hangs up mid-stream
        rest = list(b_lines)
        assert rest[-1] == "[DONE]" and json.loads(rest[-2])["choices"][0]["finish_reason"] in ("stop", "length")
        b.close()
    for _ in range(50):  # A's generation was cancelled, not run to its end
        after = http.get("/health").json()
        if after["cancelled"] == before["cancelled"] + 1:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1 and after["failed"] == before["failed"]
    assert after["finished"] >= before["finished"] + 1


def test_page_is_served(server):
    import httpx

    r = httpx.get(server + "/", trust_env=False, timeout=30, follow_redirects=True)
    assert r.status_code == 200 and "<html" in r.text.lower()

#!/usr/bin/env python3
"""Serving throughput and time to first token of web.py, batched against one-at-a-time, in one run, one JSON.

    python bench/serve_speed.py            # full size: 3 rounds, 2 requests per client, 128 tokens each
    python bench/serve_speed.py --quick    # 1 round, 1 request per client, 16 tokens (CI runs this)

web.py serves the embedded default model (no model flags) from two servers, both up for the whole run:
- batched: the built-in engine's continuous batching (--max_batch_size 16);
- one_at_a_time: --max_batch_size 1, the reference (how web.py served before batching).
1, 4 and 16 concurrent streaming clients (the reference: 1 and 16) send chat completions one after
another (temperature 0, ignore_eos, so every request generates exactly max_tokens). Each round measures
every (server, clients) pair once, the two servers alternating, so a load that drifts during the run
(other jobs on a shared machine) touches both alike. Reported per run: completion tokens/s over each
round's wall time (the median of the rounds, and each), time to first token (first content chunk) mean,
median and max over all its requests, the largest batch the server ran (in the first round), and broken
streams (an HTTP error, an error event, no [DONE], or fewer tokens than asked): a run with any is not "ok".
The target:
16 clients batched get at least 4x the completion tokens/s of one-at-a-time serving under the same 16
clients (the median of the rounds' paired ratios). Clients and servers share this machine's cores:
compare runs of one command, not across machines.
Writes bench/results/serve_speed.json (or --out) atomically and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL = {"max_tokens": 128, "requests_per_client": 2, "rounds": 3}
QUICK = {"max_tokens": 16, "requests_per_client": 1, "rounds": 1}
SERVERS = {"batched": ["--max_batch_size", "16"], "one_at_a_time": ["--max_batch_size", "1"]}
CLIENTS = {"batched": (1, 4, 16), "one_at_a_time": (1, 16)}
QUESTIONS = ["Add the numbers 23 and 48.", "Reverse the list [4, 9, 1, 7].", "What is 12 times 7?",
             "Extract the triples: Marie Curie was born in Warsaw.", "把 15 和 28 相加。",
             "Sort the words: pear apple fig.", "Count the letters in the word banana.", "Which is larger, 71 or 17?"]
TARGET = 4.0


def free_port() -> int:
    """A loopback port nothing listens on now (for a server or torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def web_server(flags: list[str], env: dict[str, str], log_path: Path | None = None, startup_s: float = 300):
    """web.py with `flags` on a free loopback port until the block ends; yields its URL once /health answers.
    Its output goes to `log_path` (else a temporary file); a server that exits or is not up in `startup_s`
    raises with the end of that output. tests/test_web.py starts its servers through this too."""
    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           **env}
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "web.py"), "--port", str(port), *flags], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"web.py did not come up (exit {proc.poll()}):\n"
                                       f"{log.read().decode(errors='replace')[-3000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def one_request(client, question: str, max_tokens: int) -> dict:
    """One streamed chat completion: its time to first content, completion tokens, and whether it broke."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens, done = None, 0, False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"broken": f"HTTP {response.status_code}", "tokens": 0}
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"broken": f"error event: {chunk['error'].get('message')}", "tokens": 0}
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as err:  # a dropped connection is a broken stream, reported, not a crash of the bench
        return {"broken": f"{type(err).__name__}: {err}", "tokens": 0}
    if not done or tokens != max_tokens:
        return {"broken": f"no [DONE] or {tokens} of {max_tokens} tokens", "tokens": tokens}
    return {"ttft": first, "tokens": tokens}


async def load_test(url: str, clients: int, size: dict) -> dict:
    """One round: `clients` concurrent clients, each sending requests_per_client requests one after another."""
    import httpx

    async def client_loop(index: int, http) -> list[dict]:
        return [await one_request(http, QUESTIONS[(index + r) % len(QUESTIONS)], size["max_tokens"])
                for r in range(size["requests_per_client"])]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, trust_env=False, limits=limits) as http:
        await one_request(http, QUESTIONS[0], 4)  # warm-up: first-call costs are not serving speed
        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client_loop(i, http) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - started
        health = (await http.get("/health")).json()
    tokens = sum(r["tokens"] for r in results)
    return {"tokens_per_second": tokens / wall, "tokens": tokens, "seconds": wall, "largest_batch":
            health.get("largest_batch"), "ttfts": [r["ttft"] for r in results if r.get("ttft") is not None],
            "broken": [r["broken"] for r in results if "broken" in r], "requests": len(results)}


def summarize(clients: int, rounds: list[dict]) -> dict:
    broken = [b for r in rounds for b in r["broken"]]
    ttfts = [t for r in rounds for t in r["ttfts"]]
    run = {"status": "ok" if not broken else "broken", "clients": clients,
           "requests": sum(r["requests"] for r in rounds), "completion_tokens": sum(r["tokens"] for r in rounds),
           "completion_tokens_per_second": statistics.median(r["tokens_per_second"] for r in rounds),
           "rounds_tokens_per_second": [r["tokens_per_second"] for r in rounds],
           "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None,
           "ttft_median_s": statistics.median(ttfts) if ttfts else None, "ttft_max_s": max(ttfts, default=None),
           # /health's largest_batch is the server's so far: exact for each run in the first round (clients 1, 4, 16)
           "broken_streams": len(broken), "largest_batch": rounds[0]["largest_batch"]}
    if broken:
        run["errors"] = sorted(set(broken))[:3]
    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 request per client, 16 tokens (CI)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (OMP_NUM_THREADS)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_speed.json"))
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    logs = Path(tempfile.mkdtemp(prefix="unitune-serve-speed-"))
    names = [f"{server}_{c}" for c in (1, 4, 16) for server in SERVERS if c in CLIENTS[server]]
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    runs: dict[str, dict] = {}
    try:
        with ExitStack() as stack:
            urls = {server: stack.enter_context(web_server(["--max_queue", "64", *flags],
                                                           {"OMP_NUM_THREADS": str(args.threads)},
                                                           logs / f"{server}.log"))
                    for server, flags in SERVERS.items()}
            for _ in range(size["rounds"]):
                for name in names:
                    server, clients = name.rsplit("_", 1)
                    rounds[name].append(asyncio.run(load_test(urls[server], int(clients), size)))
        runs = {name: summarize(int(name.rsplit("_", 1)[1]), rounds[name]) for name in names}
    except Exception as err:  # a server that fails to start fails the runs, visibly
        runs = {name: {"status": "failed", "error": str(err)[-500:]} for name in names}
    paired = [b["tokens_per_second"] / r["tokens_per_second"]
              for b, r in zip(rounds["batched_16"], rounds["one_at_a_time_16"])]
    ok = runs["batched_16"].get("status") == runs["one_at_a_time_16"].get("status") == "ok"
    speedup = statistics.median(paired) if paired and ok else None
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_threads": os.cpu_count(), "torch": metadata.version("torch")},
              "workload": {"model": "embedded default (models/unitune-tiny, no model flags)", **size,
                           "server_threads": args.threads, "servers": {k: " ".join(v) for k, v in SERVERS.items()},
                           "route": "/v1/chat/completions, stream, temperature 0, ignore_eos"},
              "command": "python bench/serve_speed.py" + (" --quick" if args.quick else "")
                         + (f" --threads {args.threads}" if args.threads != 1 else ""),
              "runs": runs,
              "summary": {"speedup_16_clients_batched_vs_one_at_a_time": speedup, "rounds_speedup": paired,
                          "target": TARGET, "met": speedup is not None and speedup >= TARGET}}
    from unitune.writable import write_atomic

    write_atomic(Path(args.out), json.dumps(result, indent=2))
    print(table(result))
    return result


def table(result: dict) -> str:
    lines = ["| run | clients | completion tokens/s | TTFT mean s | TTFT max s | largest batch | broken | status |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        if run.get("status") == "failed":
            lines.append(f"| {name} | | | | | | | failed: {run.get('error', '')[:80]} |")
            continue
        lines.append(f"| {name} | {run['clients']} | {run['completion_tokens_per_second']:.0f} | "
                     f"{run['ttft_mean_s'] or 0:.3f} | {run['ttft_max_s'] or 0:.3f} | {run['largest_batch']} | "
                     f"{run['broken_streams']} | {run['status']} |")
    summary = result["summary"]
    if summary["speedup_16_clients_batched_vs_one_at_a_time"] is not None:
        lines.append(f"\n16 clients: batched / one-at-a-time = "
                     f"{summary['speedup_16_clients_batched_vs_one_at_a_time']:.2f}x (target {summary['target']:.0f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""An OpenAI-compatible judge: concurrent chat calls with a limit, backoff on 429 / 5xx, replies cached on disk.

The cache keeps every reply under a key of (judge model, messages, temperature, attempt number): a re-run
replays the same replies, retries of an unscorable reply included, without a single call. Failed calls
(429, 5xx, timeouts) are never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from unitune.errors import UnituneError
from unitune.writable import write_atomic

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeError(Exception):
    """A call that failed for good (after the transport retries)."""


class Judge:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, cache_dir: str | Path | None = None,
                 concurrency: int = 4, max_retries: int = 5, timeout: float = 120.0, temperature: float = 0.0,
                 backoff: float = 1.0) -> None:
        if not base_url:
            raise UnituneError("belle: --judge_base_url is required to score answers (any OpenAI-compatible "
                               "endpoint, e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise UnituneError("belle: --judge_model is required (the model name the judge endpoint serves)")
        if concurrency < 1:
            raise UnituneError(f"--judge_concurrency must be at least 1, got {concurrency}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.timeout = model, temperature, timeout
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.max_retries, self.backoff = max_retries, backoff
        default = Path.home() / ".cache" / "unitune" / "judge"
        self.cache_dir = Path(cache_dir) if cache_dir else default
        self.slots = threading.Semaphore(concurrency)
        self.calls = self.cache_hits = 0
        self._lock = threading.Lock()
        self._client = None

    def _key(self, messages: list[dict], attempt: int) -> str:
        blob = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "attempt": attempt}, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _cached(self, key: str) -> str | None:
        path = self.cache_dir / key[:2] / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        except (OSError, ValueError, KeyError):
            return None

    def _store(self, key: str, messages: list[dict], reply: str) -> None:
        write_atomic(self.cache_dir / key[:2] / f"{key}.json",
                     json.dumps({"model": self.model, "messages": messages, "reply": reply}, ensure_ascii=False))

    def client(self):
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout,
                                            headers={"Authorization": f"Bearer {self.api_key}"})
            return self._client

    def _call(self, messages: list[dict]) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                with self.slots:
                    response = self.client().post(self.url, json=body)
                with self._lock:
                    self.calls += 1
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    try:
                        return str(response.json()["choices"][0]["message"]["content"] or "")
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise JudgeError(f"{self.url}: a 200 reply that is not a chat completion") from None
                if response.status_code in (401, 403):
                    raise UnituneError(f"--judge_base_url {self.url}: HTTP {response.status_code}; check "
                                       f"--judge_api_key")
                if response.status_code not in RETRY_STATUS:
                    raise JudgeError(f"{self.url}: HTTP {response.status_code}: {response.text[:200]}")
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, min(float(retry_after), 60.0))
            if attempt == self.max_retries:
                raise JudgeError(f"{self.url}: {problem} after {self.max_retries + 1} tries")
            log.debug("judge: %s; retrying in %.1f s", problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def ask(self, messages: list[dict], attempt: int = 0) -> str:
        """The judge's reply to `messages` (the attempt-th time it is asked), from the cache when there."""
        key = self._key(messages, attempt)
        reply = self._cached(key)
        if reply is not None:
            with self._lock:
                self.cache_hits += 1
            return reply
        reply = self._call(messages)
        self._store(key, messages, reply)
        return reply

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

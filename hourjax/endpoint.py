"""A client for any OpenAI-compatible chat-completions endpoint (a hosted API, a vLLM or SGLang
server, or `launch.serve`), for judges and annotation pipelines.

    client = ChatClient("http://localhost:8000/v1", "gpt-3.5-turbo-1106", cache="/runs/judge.jsonl")
    text = client.complete([{"role": "user", "content": "..."}], max_tokens=128, validate=parse)

- At most `concurrency` requests in flight from this client, however many threads use it.
- Timeouts, and retries with exponential backoff on connection errors, timeouts, 429 and 5xx.
- An on-disk cache keyed by the request (endpoint model + messages + parameters): a rerun asks
  nothing twice, and every answer is appended and flushed as it arrives, so a crash loses
  nothing. Answers that fail `validate` are re-asked (a bounded number of times) and never cached.
- Counts of requests, cache hits and tokens (`stats`). Thread-safe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence


class EndpointError(RuntimeError):
  """The endpoint could not give a (valid) answer."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """What it takes to build a `ChatClient` where it is used (a Beam worker: clients, with their
  locks and caches, do not travel); the API key is read from that machine's environment."""
  url: str
  model: str
  api_key_env: str = "OPENAI_API_KEY"
  cache: str | None = None
  concurrency: int = 16

  def client(self) -> "ChatClient":
    return ChatClient(self.url, self.model, os.environ.get(self.api_key_env), cache=self.cache,
                      concurrency=self.concurrency)


class ChatClient:

  def __init__(self, url: str, model: str, api_key: str | None = None, *, cache: str | None = None,
               timeout: float = 120.0, retries: int = 5, backoff: float = 1.0, concurrency: int = 16):
    url = url.rstrip("/")
    self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
    self.model, self.api_key, self.timeout = model, api_key, timeout
    self.retries, self.backoff = retries, backoff
    self.cache_path = cache
    self._cache: dict[str, str] = {}
    self._lock = threading.Lock()
    self._slots = threading.BoundedSemaphore(max(1, concurrency))
    self.stats = {"requests": 0, "cached": 0, "retries": 0, "invalid": 0, "prompt_tokens": 0,
                  "completion_tokens": 0}
    if cache and os.path.exists(cache):
      with open(cache, encoding="utf-8") as f:
        for line in f:
          try:
            row = json.loads(line)
            self._cache[row["key"]] = row["reply"]
          except (ValueError, KeyError):      # a line cut by a crash: that answer is asked again
            continue

  def key(self, messages: Sequence[dict], params: dict) -> str:
    body = json.dumps({"model": self.model, "messages": list(messages), **params}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()

  def complete(self, messages: Sequence[dict], *, validate: Callable[[str], Any] | None = None,
               attempts: int = 3, **params: Any) -> str:
    """The reply text; `validate(reply)` raising ValueError re-asks, up to `attempts` times."""
    key = self.key(messages, params)
    with self._lock:
      if key in self._cache:
        self.stats["cached"] += 1
        return self._cache[key]
    last = None
    for _ in range(max(1, attempts)):
      reply = self._post({"model": self.model, "messages": list(messages), **params})
      try:
        if validate is not None:
          validate(reply)
      except ValueError as e:
        last = e
        with self._lock:
          self.stats["invalid"] += 1
        continue
      self._remember(key, reply)
      return reply
    raise EndpointError(f"{self.url}: no valid answer in {attempts} attempts ({last})")

  def _remember(self, key: str, reply: str) -> None:
    with self._lock:
      self._cache[key] = reply
      if self.cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        with open(self.cache_path, "a", encoding="utf-8") as f:
          f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
          f.flush()

  def _post(self, body: dict) -> str:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    for attempt in range(self.retries + 1):
      with self._lock:
        self.stats["requests"] += 1
      try:
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with self._slots, urllib.request.urlopen(request, timeout=self.timeout) as response:
          payload = json.loads(response.read().decode("utf-8"))
        usage = payload.get("usage") or {}
        with self._lock:
          for k in ("prompt_tokens", "completion_tokens"):
            self.stats[k] += int(usage.get(k) or 0)
        return payload["choices"][0]["message"]["content"] or ""
      except urllib.error.HTTPError as e:
        if e.code != 429 and e.code < 500:
          detail = e.read().decode("utf-8", "replace")[:300]
          raise EndpointError(f"{self.url}: HTTP {e.code}: {detail}") from None
        error: Exception = e
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        error = e
      except (ValueError, KeyError, IndexError, TypeError) as e:
        raise EndpointError(f"{self.url}: not a chat-completions answer ({e})") from None
      if attempt == self.retries:
        raise EndpointError(f"{self.url}: unreachable after {self.retries + 1} tries ({error})")
      with self._lock:
        self.stats["retries"] += 1
      time.sleep(self.backoff * 2 ** attempt * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")

"""Batched generation for a server: requests arriving from many clients are gathered for a few
milliseconds, grouped by bucket (modality, frames, prompt length), and each group runs as one
batch: one prefill of the KV cache, then a decoding loop driven from the host, one token per
step for every row, each row with its own sampling settings, stop strings, token budget and
(structured output) the tokens its JSON schema allows next.

    engine = Engine(loaded, Buckets(frames=(128, 512), text=(512, 2048)), max_batch=8)
    engine.submit(Request(sample, "video", max_new_tokens=64, on_event=print))
    # on_event gets {"text": delta} as the answer grows, then {"finish": "stop" | "length",
    # "usage": {...}}, or {"error": message}

Shapes are static: the batch is padded to a power of two (at most `max_batch`), the prompt to
its bucket and the cache to the bucket's LLM length plus a power of two of new tokens, so one
compiled program serves each bucket. The loop is on the host (unlike `generate.generate`'s
`while_loop`) because stop strings, streaming and the grammar's allowed tokens are host work
between two tokens; a row that finishes stops being reported while the batch goes on.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import os
import queue
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hourjax.data.batching import Buckets, check_sample, collate
from hourjax.infer import constrain
from hourjax.infer.generate import sample_rows


@dataclasses.dataclass(eq=False)
class Request:
  sample: dict                    # input_ids, labels; `features` [T, g, C] or `pixels` [1, S, S, 3]
  modality: str                   # "video", "image" or "text"
  max_new_tokens: int
  temperature: float = 1.0        # 0: greedy
  top_p: float = 1.0
  seed: int | None = None         # None: a fresh random draw
  stop: tuple[str, ...] = ()      # the answer ends before the first of these strings
  grammar: str | None = None      # constrain.json_grammar(...): structured output
  on_event: Callable[[dict], None] = print
  cancelled: bool = False         # set by the server when the client goes away


def _edge(n: int, smallest: int, largest: int) -> int:
  """The power of two at or above n (at least `smallest`, at most `largest`)."""
  return min(largest, max(smallest, 1 << max(0, n - 1).bit_length()))


class Engine:
  """A worker thread that owns the device: `submit` from any thread, events come back through
  each request's `on_event` (called on the worker thread)."""

  def __init__(self, loaded: Any, buckets: Buckets, *, max_batch: int = 8, batch_wait: float = 0.01,
               max_new_tokens: int = 4096):
    self.loaded = loaded
    self.model, self.params, self.cfg, self.tokenizer = loaded.model, loaded.params, loaded.cfg, loaded.tokenizer
    self.buckets, self.max_batch, self.batch_wait, self.max_new_tokens = buckets, max_batch, batch_wait, max_new_tokens
    self.vocab = self.cfg.llm.vocab_size
    self.stats = collections.Counter()
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._work, name="hourjax-engine", daemon=True)
    self._thread.start()

  def submit(self, request: Request) -> None:
    """Queue a request; ValueError (naming why) if it cannot be batched, before it is queued."""
    check_sample(request.sample, self.cfg, self.buckets, request.modality)
    if request.max_new_tokens > self.max_new_tokens:
      raise ValueError(f"max_tokens={request.max_new_tokens} exceeds the server's limit of {self.max_new_tokens}")
    self._queue.put(request)

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join()

  def key_of(self, request: Request) -> tuple:
    """The bucket a request batches in (ValueError if it fits none)."""
    s = request.sample
    visual = s.get("features", s.get("pixels"))
    frames, text = self.buckets.of(0 if visual is None else len(visual), len(s["input_ids"]))
    return request.modality, frames if request.modality == "video" else 0, text

  # -- the worker ---------------------------------------------------------------------------

  def _work(self) -> None:
    while True:
      first = self._queue.get()
      if first is None:
        return
      pending, deadline = [first], time.monotonic() + self.batch_wait
      while len(pending) < 4 * self.max_batch:
        try:
          more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if more is None:
          self._queue.put(None)
          break
        pending.append(more)
      groups: dict[tuple, list[Request]] = collections.defaultdict(list)
      for r in pending:
        try:
          groups[self.key_of(r)].append(r)
        except ValueError as e:
          self._emit(r, {"error": str(e)})
      for group in groups.values():
        for i in range(0, len(group), self.max_batch):
          rows = group[i:i + self.max_batch]
          try:
            self._run(rows)
          except Exception as e:        # a failed batch answers its requests; the server goes on
            for r in rows:
              self._emit(r, {"error": f"generation failed ({type(e).__name__}: {e})"})

  def _emit(self, request: Request, event: dict) -> None:
    try:
      request.on_event(event)
    except Exception:       # the client is gone (its event loop closed): stop its row
      request.cancelled = True

  @functools.cached_property
  def _programs(self) -> tuple[Any, Any]:
    model = self.model

    @functools.partial(jax.jit, static_argnums=3)
    def prefill(params, batch, rng, new_tokens):
      inputs = dict(batch.model_inputs(), rng=rng)
      out_len = jax.eval_shape(lambda: model.apply({"params": params}, batch.input_ids, batch.attention_mask,
                                                   **inputs)["attention_mask"]).shape[1]
      pre = model.apply({"params": params}, batch.input_ids, batch.attention_mask, **inputs,
                        cache_len=out_len + new_tokens)
      return pre["last_logits"], pre["cache"], pre["lengths"]

    @functools.partial(jax.jit, donate_argnums=2)
    def step(params, logits, cache, positions, bits, temperature, top_p, keys, i):
      allowed = ((bits[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1).reshape(bits.shape[0], -1)
      token = sample_rows(logits, jax.vmap(jax.random.fold_in, (0, None))(keys, i), temperature, top_p,
                          allowed[:, :logits.shape[-1]] > 0)
      logits, cache = model.apply({"params": params}, token, positions, cache, method="decode_step")
      return token, logits, cache, positions + 1

    return prefill, step

  def _run(self, rows: list[Request]) -> None:
    prefill, step = self._programs
    tok, n = self.tokenizer, len(rows)
    size = _edge(n, 1, self.max_batch)
    samples = [r.sample for r in rows] + [rows[0].sample] * (size - n)
    batch = collate(samples, self.cfg, self.buckets, modality=rows[0].modality)
    new_tokens = _edge(max(r.max_new_tokens for r in rows), 16, self.max_new_tokens)
    seeds = [r.seed if r.seed is not None else int.from_bytes(os.urandom(4), "little") for r in rows]
    keys = jnp.stack([jax.random.key(s) for s in seeds + [0] * (size - n)])   # padding rows: greedy
    temperature = np.asarray([r.temperature for r in rows] + [0.0] * (size - n), np.float32)
    top_p = np.asarray([r.top_p for r in rows] + [1.0] * (size - n), np.float32)
    logits, cache, positions = prefill(self.params, batch, jax.random.fold_in(jax.random.key(seeds[0]), 1),
                                       new_tokens)
    prompt_tokens = np.asarray(positions)[:n]
    constraints = [constrain.Constraint(tok, self.vocab, r.grammar) if r.grammar else None for r in rows]
    bits = np.full((size, constrain.words(self.vocab)), -1, np.int32)
    answers: list[list[int]] = [[] for _ in rows]
    sent = [0] * n
    done = [r.cancelled for r in rows]
    self.stats["batches"] += 1
    self.stats["requests"] += n
    self.stats["largest_batch"] = max(self.stats["largest_batch"], n)

    def finish(j: int, reason: str, text: str) -> None:
      done[j] = True
      if text[sent[j]:]:
        self._emit(rows[j], {"text": text[sent[j]:]})
      self._emit(rows[j], {"finish": reason, "usage": {
          "prompt_tokens": int(prompt_tokens[j]), "completion_tokens": len(answers[j]),
          "total_tokens": int(prompt_tokens[j]) + len(answers[j])}})

    for i in range(new_tokens):
      for j, c in enumerate(constraints):
        if c is not None and not done[j]:
          c.fill(bits[j])
      token, logits, cache, positions = step(self.params, logits, cache, positions, bits, temperature, top_p,
                                             keys, i)
      token = np.asarray(token)
      self.stats["tokens"] += sum(not d for d in done)
      for j, r in enumerate(rows):
        if done[j] or r.cancelled:
          done[j] = True
          continue
        t = int(token[j])
        if t in tok.stop_ids:
          finish(j, "stop", tok.decode(answers[j]))
          continue
        answers[j].append(t)
        complete = constraints[j] is not None and constraints[j].advance(t)
        text = tok.decode(answers[j])
        cut = min((text.find(s) for s in r.stop if s in text), default=-1)
        if cut >= 0:
          finish(j, "stop", text[:cut])
        elif complete:
          finish(j, "stop", text)
        elif len(answers[j]) >= r.max_new_tokens:
          finish(j, "length", text)
        else:       # hold back what may still become a stop string or an unfinished character
          safe = len(text.rstrip("\ufffd")) - max((len(s) - 1 for s in r.stop), default=0)
          if safe > sent[j]:
            self._emit(r, {"text": text[sent[j]:safe]})
            sent[j] = safe
      if all(done):
        return

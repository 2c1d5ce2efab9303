"""An OpenAI-compatible HTTP server for an hourjax checkpoint (FastAPI; `launch.serve` runs it
under uvicorn).

    app = create_app(engine, "hourjax-hl7b")      # engine: infer.engine.Engine
    GET  /v1/models, /v1/models/{name}
    POST /v1/chat/completions   {"model", "messages", "max_tokens" | "max_completion_tokens",
                                 "temperature", "top_p", "stop", "seed", "stream",
                                 "stream_options": {"include_usage"},
                                 "response_format": {"type": "text" | "json_object" | "json_schema"}}
    GET  /health

Messages carry text, images and videos (`infer.messages`). Streaming answers are server-sent
events of `chat.completion.chunk` objects ending with `data: [DONE]`. `response_format` with a
JSON schema is honoured by constrained decoding (`infer.constrain`). Every failure is an
OpenAI-style error body (`{"error": {"message", "type", "param", "code"}}`) with its status:
400 for a bad request (malformed JSON, a missing video, an invalid schema, a prompt too long for
the server's buckets), 404 for an unknown model or route, 500 if generation itself failed; the
server keeps serving. Sampling defaults are OpenAI's (temperature 1, top_p 1).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from hourjax.infer import constrain
from hourjax.infer.engine import Engine, Request
from hourjax.infer.messages import RequestError, VisualOptions, read_prompt


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
  kind = "not_found_error" if status == 404 else "invalid_request_error" if status < 500 else "server_error"
  return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
    raise RequestError(f"{name}={value!r}: expected a number in [{low}, {high}]", name)
  return float(value)


def sampling_of(body: dict, limit: int) -> dict:
  """The request's generation settings (RequestError naming a bad one)."""
  n = body.get("n", 1)
  if n != 1:
    raise RequestError(f"n={n!r}: this server returns one choice per request", "n")
  max_new = body.get("max_completion_tokens", body.get("max_tokens"))
  max_new = limit if max_new is None else max_new
  if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= limit:
    raise RequestError(f"max_tokens={max_new!r}: expected an integer from 1 to {limit}", "max_tokens")
  stop = body.get("stop") or []
  stop = [stop] if isinstance(stop, str) else stop
  if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
    raise RequestError("stop: expected a string or up to 4 non-empty strings", "stop")
  seed = body.get("seed")
  if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
    raise RequestError(f"seed={seed!r}: expected an integer", "seed")
  top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
  if top_p <= 0:
    raise RequestError("top_p=0: expected a number in (0, 1]", "top_p")
  return {"max_new_tokens": max_new, "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
          "top_p": top_p, "stop": tuple(stop), "seed": None if seed is None else seed % 2 ** 32}


def grammar_of(body: dict) -> str | None:
  """The grammar `response_format` asks for (None: free text)."""
  fmt = body.get("response_format")
  if fmt is None:
    return None
  kind = fmt.get("type") if isinstance(fmt, dict) else None
  if kind == "text":
    return None
  if kind == "json_object":
    return constrain.json_grammar(None)
  if kind == "json_schema":
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
      raise RequestError("response_format.json_schema: expected {\"name\", \"schema\": {...}}", "response_format")
    try:
      return constrain.json_grammar(spec.get("schema", {}))
    except ValueError as e:
      raise RequestError(f"response_format: {e}", "response_format") from None
  raise RequestError(f"response_format.type={kind!r}: expected text, json_object or json_schema", "response_format")


def create_app(engine: Engine, model_name: str, visual: VisualOptions = VisualOptions()) -> FastAPI:
  app = FastAPI(title="hourjax", version="1")
  created = int(time.time())

  @app.exception_handler(HTTPException)
  async def http_error(request, e):       # unknown routes and methods, in OpenAI's form
    return _error(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

  @app.exception_handler(Exception)
  async def server_error(request, e):
    return _error(500, f"internal error ({type(e).__name__}: {e})")

  @app.get("/health")
  async def health():
    return {"status": "ok", "engine": dict(engine.stats)}

  card = {"id": model_name, "object": "model", "created": created, "owned_by": "hourjax"}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [card]}

  @app.get("/v1/models/{name:path}")
  async def model(name: str):
    if name != model_name:
      return _error(404, f"The model {name!r} does not exist; this server serves {model_name!r}", "model",
                    "model_not_found")
    return card

  @app.post("/v1/chat/completions")
  async def chat_completions(http: HttpRequest):
    try:
      body = json.loads(await http.body())
    except (ValueError, UnicodeDecodeError) as e:
      return _error(400, f"the request body is not valid JSON ({e})")
    if not isinstance(body, dict):
      return _error(400, "the request body must be a JSON object")
    if body.get("model") != model_name:
      return _error(404, f"The model {body.get('model')!r} does not exist; this server serves {model_name!r}",
                    "model", "model_not_found")
    try:
      settings, grammar = sampling_of(body, engine.max_new_tokens), grammar_of(body)
      prompt = await run_in_threadpool(read_prompt, engine.loaded, body.get("messages"), visual)
    except RequestError as e:
      return _error(e.status, str(e), e.param, e.code)

    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    request = Request(prompt.sample, prompt.modality, grammar=grammar,
                      on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e), **settings)
    try:
      engine.submit(request)
    except ValueError as e:
      return _error(400, str(e), "messages")
    reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}

    if not body.get("stream"):
      text = []
      while "finish" not in (event := await events.get()):
        if "error" in event:
          return _error(500, event["error"])
        text.append(event["text"])
      return {**reply, "object": "chat.completion", "usage": event["usage"], "choices": [{
          "index": 0, "message": {"role": "assistant", "content": "".join(text)},
          "finish_reason": event["finish"], "logprobs": None}]}

    first = await events.get()
    if "error" in first:
      return _error(500, first["error"])
    usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
      return "data: " + json.dumps({**reply, "object": "chat.completion.chunk", **extra, "choices": [
          {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}) + "\n\n"

    async def stream():
      event = first
      try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
          if "error" in event:
            yield "data: " + json.dumps({"error": {"message": event["error"], "type": "server_error"}}) + "\n\n"
            break
          if "finish" in event:
            yield chunk({}, event["finish"])
            if usage:
              yield "data: " + json.dumps({**reply, "object": "chat.completion.chunk", "choices": [],
                                           "usage": event["usage"]}) + "\n\n"
            break
          yield chunk({"content": event["text"]})
          event = await events.get()
        yield "data: [DONE]\n\n"
      finally:
        request.cancelled = True     # a client that goes away frees its row

    return StreamingResponse(stream(), media_type="text/event-stream")

  return app


class Background:
  """The app under uvicorn on a thread (tests, notebooks): `with Background(app) as url: ...`
  gives the base URL (`http://127.0.0.1:PORT/v1`); port 0 picks a free one."""

  def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
    import uvicorn
    self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    self.thread = threading.Thread(target=self.server.run, daemon=True)

  def __enter__(self) -> str:
    self.thread.start()
    while not self.server.started:
      if not self.thread.is_alive():
        raise RuntimeError("the server did not start (is the port taken?)")
      time.sleep(0.02)
    host, port = self.server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}/v1"

  def __exit__(self, *exc) -> None:
    self.server.should_exit = True
    self.thread.join()

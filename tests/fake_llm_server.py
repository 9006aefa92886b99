"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only, no model).

Endpoints: ``POST /v1/chat/completions`` (OpenAI response JSON with ``usage``), ``POST /v1/completions`` (a
raw prompt; one ending in ``[[`` is answered with a rating, as a continued chat prefill is) and
``GET /v1/models``.

* ``responder(request_json) -> str`` makes the reply text; built-ins: ``echo`` (the last user message),
  ``questions`` (five numbered questions derived from the prompt), ``judge`` (a short review ending in
  ``Rating: [[k]]`` with k in 1..10 from a hash of the prompt). Deterministic. Tests plug their own with
  ``set_responder``; a separate process takes ``--responder name`` or ``--responder module:function`` /
  ``--responder path/to/file.py:function``.
* Failure injection per attempt, independent of history: a fraction ``fail_rate`` of requests (drawn
  from ``random.Random(seed)``) is answered 429, 500, 503, delayed by ``delay_s`` (past the client timeout) or
  dropped (``"drop"``: the connection is closed without any answer), mixed by ``fail_kinds``; with
  ``fail_after=n`` the random failures start only once ``n`` requests were answered (a server that works,
  then falters). ``script([...])`` queues exact outcomes (``"429"``, ``"500"``, ``"400"``, ``"401"``,
  ``"403"``, ``"404"``, ``"timeout"``, ``"drop"``, ``"ok"``) for the next requests, consumed before random
  draws.
* Endpoint errors: ``require_key`` answers 401 to every request without ``Authorization: Bearer <key>``;
  ``models`` (a set of names) answers 404 "model does not exist" to a request for any other model, as vLLM
  does; ``completions_route=False`` serves no ``/v1/completions`` (404 Not Found, as a chat-only server
  answers). :func:`closed_port` gives a port of 127.0.0.1 that nothing listens on (connection refused).
* Usage: prompt tokens = words of all message contents + 4 per message; completion tokens = words of the
  reply, which is cut to ``max_tokens`` words (``finish_reason: "length"``).
* Log-probabilities, in the shape vLLM and llama.cpp return for chat completions: with ``logprobs: true``
  and ``top_logprobs: k`` the choice carries ``logprobs.content = [{"token", "logprob", "bytes",
  "top_logprobs": [{"token", "logprob", "bytes"}, ...k]}]`` (``logprobs_shape="completions"`` sends the
  legacy ``tokens``/``token_logprobs``/``top_logprobs: [{token: logprob}]`` shape instead;
  ``logprobs=False`` makes a server that ignores the request and sends ``logprobs: null``).
* Assistant prefill (``prefill``): ``"vllm"`` continues a final assistant message only when the request
  says ``continue_final_message: true``, ``"llamacpp"`` always does, ``"none"`` never does (it answers as if
  the turn were new). A continued message ending in ``[[`` is answered with a rating drawn from
  :func:`rating_distribution` (the argmax, then ``]]``), digits one token each as in Llama-style
  tokenizers, and the log-probabilities of that distribution at the rating positions.
* Request log: ``.requests`` (list) and optionally a jsonl file (one flushed line per request):
  ``{"n", "time", "key" (SHA-256 of the canonical JSON of messages), "request" (SHA-256 of the canonical JSON of
  the whole request body: a retry of a request has the same value, a different seed or model does not),
  "model", "status" (HTTP status sent, or 0 when the reply was abandoned or dropped), "outcome"
  ("ok"|"429"|"500"|"400"|"401"|"403"|"404"|"timeout"|"drop"|"unauthorized"|"no_model"|"bad_request"),
  "in_flight", "seed", "temperature", "max_tokens", "logprobs" (top_logprobs asked, or null), "prefill"
  (whether a final assistant message was continued)}``. ``max_in_flight`` is the peak concurrency seen.

:func:`paid_twice` and :func:`answered_requests` read the log: a request is paid when the server answered it
with status 200, and paid twice when the same ``request`` value was answered 200 more than once.

Asserting "nothing was paid twice" after killing a client: a request the server answered in the very
instant of the kill may be sent again (its answer never reached the client's cache), so compare against
the client's cache or calls log, or let the server go idle (``in_flight == 0``) before counting.

Run it alone: ``python tests/fake_llm_server.py --port-file F [--fail-rate 0.3] [--fail-after 1]
[--fail-kinds 429,500,drop] [--log F.jsonl] [--responder echo|questions|judge|mod:fn] [--latency 0.05]
[--delay 5] [--seed 0] [--require-key K] [--models a,b]``; it writes its port to ``F`` (atomically) once
listening and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib
import importlib.util
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Responder = Callable[[dict], str]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def messages_key(messages: Any) -> str:
    """Same hash as ``longalign.llm.cache.messages_hash``."""
    return hashlib.sha256(_canonical(messages).encode("utf-8")).hexdigest()


def request_hash(req: Any) -> str:
    """SHA-256 of the canonical JSON of a whole request body (what the request log calls ``request``)."""
    return hashlib.sha256(_canonical(req).encode("utf-8")).hexdigest()


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on: bound, then released at once (connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_log(path: str | Path) -> list[dict]:
    """The entries of a request-log file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def answered_requests(entries: list[dict]) -> dict[str, int]:
    """``request`` hash -> times the server answered it with status 200 (was paid)."""
    out: dict[str, int] = {}
    for e in entries:
        if e.get("status") == 200 and e.get("request"):
            out[e["request"]] = out.get(e["request"], 0) + 1
    return out


def paid_twice(entries: list[dict]) -> list[str]:
    """The ``request`` hashes the server answered with status 200 more than once."""
    return sorted(k for k, n in answered_requests(entries).items() if n > 1)


def _last_user(req: dict) -> str:
    for m in reversed(req.get("messages") or []):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def echo_responder(req: dict) -> str:
    return _last_user(req)


def questions_responder(req: dict) -> str:
    text = _last_user(req)
    words = [w.strip(".,;:!?\"'()[]") for w in text.split()]
    words = [w for w in words if len(w) > 3] or ["document"]
    h = int(messages_key(req.get("messages")), 16)
    out = []
    for i in range(5):
        w = words[(h >> (8 * i)) % len(words)]
        out.append(f'{i + 1}: What does the document say about "{w}" (point {i + 1})?')
    return "\n".join(out)


def judge_responder(req: dict) -> str:
    k = int(messages_key(req.get("messages"))[:8], 16) % 10 + 1
    return f"The answer covers the main points with some gaps. Rating: [[{k}]]"


def unrated_responder(req: dict) -> str:
    """A judge that never writes ``[[N]]`` (what the embedded 135M model does)."""
    return "The answer is helpful and mostly accurate, but it misses a detail. Overall it is good."


BUILTIN_RESPONDERS: dict[str, Responder] = {
    "echo": echo_responder,
    "questions": questions_responder,
    "judge": judge_responder,
    "unrated": unrated_responder,
}


def rating_distribution(messages: Any) -> dict[int, float]:
    """The fake judge's belief over ratings 1..10 for a prompt (``messages`` without the prefill): peaked at
    a rating drawn from a hash of the prompt, mass falling by e per step away from it."""
    peak = int(messages_key(messages)[:8], 16) % 10 + 1
    w = {r: 2.718281828459045 ** -abs(r - peak) for r in range(1, 11)}
    z = sum(w.values())
    return {r: v / z for r, v in w.items()}


_TOKEN = re.compile(r"\d|\]\]|\[\[|\s*[A-Za-z]+|\s*[^\w\s]|\s+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text) or [text]


def _rating_positions(dist: dict[int, float]) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """Tokens of the argmax rating + ``]]`` and, per position, the top alternatives with log-probs."""
    first: dict[str, float] = {}
    for r, p in dist.items():
        first[str(r)[0]] = first.get(str(r)[0], 0.0) + p
    best = max(dist, key=lambda r: dist[r])
    toks = list(str(best)) + ["]]"]
    tops = [sorted(((t, math.log(p)) for t, p in first.items()), key=lambda x: -x[1])]
    if best == 10 or best == 1:
        p1, p10 = dist.get(1, 0.0), dist.get(10, 0.0)
        alts = [("0", math.log(p10 / (p1 + p10))), ("]]", math.log(p1 / (p1 + p10)))]
        tops.append(sorted(alts, key=lambda x: -x[1]))
    if best != 1:
        tops.append([("]]", math.log(0.99)), ("]", math.log(0.01))])
    return toks, tops


def _text_positions(text: str) -> tuple[list[str], list[list[tuple[str, float]]]]:
    toks = _tokens(text)
    return toks, [[(t, math.log(0.9)), (" the", math.log(0.05)), (".", math.log(0.02))] for t in toks]


def load_responder(name: str) -> Responder:
    """A built-in name, ``module:function`` or ``path/to/file.py:function``."""
    if name in BUILTIN_RESPONDERS:
        return BUILTIN_RESPONDERS[name]
    target, sep, attr = name.rpartition(":")
    if not sep:
        raise ValueError(f"unknown responder {name!r}: use {', '.join(BUILTIN_RESPONDERS)} or module:function")
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(target)
    return getattr(module, attr)


class FakeLLMServer:
    """Threaded HTTP server; ``start()`` binds 127.0.0.1:port (0 = any free port) and serves in a thread."""

    def __init__(
        self,
        *,
        responder: Responder | str = "echo",
        fail_rate: float = 0.0,
        fail_kinds: dict[str, float] | None = None,
        delay_s: float = 2.0,
        latency_s: float = 0.0,
        seed: int = 0,
        log_path: str | Path | None = None,
        model: str = "fake-model",
        retry_after: str | None = None,
        require_key: str | None = None,
        models: set[str] | list[str] | None = None,
        fail_after: int = 0,
        completions_route: bool = True,
        port: int = 0,
        logprobs: bool = True,
        logprobs_shape: str = "chat",
        prefill: str = "vllm",
    ):
        self.responder: Responder = load_responder(responder) if isinstance(responder, str) else responder
        self.fail_rate = float(fail_rate)
        self.fail_kinds = dict(fail_kinds or {"429": 1.0, "500": 1.0, "timeout": 1.0})
        self.delay_s = float(delay_s)
        self.latency_s = float(latency_s)
        self.model = model
        self.retry_after = retry_after
        self.require_key = require_key
        self.models = set(models) if models else None
        self.fail_after = int(fail_after)
        self.completions_route = bool(completions_route)
        self.answered = 0  # requests answered with status 200
        self.log_path = Path(log_path) if log_path else None
        if prefill not in ("vllm", "llamacpp", "none"):
            raise ValueError(f"prefill={prefill!r}: use vllm, llamacpp or none")
        if logprobs_shape not in ("chat", "completions"):
            raise ValueError(f"logprobs_shape={logprobs_shape!r}: use chat or completions")
        self.logprobs = bool(logprobs)
        self.logprobs_shape = logprobs_shape
        self.prefill = prefill
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._script: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    # configuration -----------------------------------------------------------------------------------
    def set_responder(self, fn: Responder | str) -> None:
        self.responder = load_responder(fn) if isinstance(fn, str) else fn

    def script(self, outcomes: list[str]) -> None:
        """Queue exact outcomes for the next requests (before any random failure draw)."""
        with self._lock:
            self._script.extend(str(o) for o in outcomes)

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    # lifecycle ----------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLMServer:
        server = self
        self._stopped = False

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; connections kept alive by clients are closed at their next request, unanswered (a
        stopped server answers nothing more)."""
        self._stopped = True
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # request handling ---------------------------------------------------------------------------------
    def _draw_outcome(self) -> str:
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self.fail_rate > 0 and self.answered >= self.fail_after and self._rng.random() < self.fail_rate:
                kinds = sorted(self.fail_kinds)
                return self._rng.choices(kinds, weights=[self.fail_kinds[k] for k in kinds])[0]
            return "ok"

    def _record(self, entry: dict) -> None:
        with self._lock:
            if entry.get("status") == 200:
                self.answered += 1
            entry["n"] = len(self.requests)
            self.requests.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    fh.flush()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLMServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> bool:
        body = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.fake.model, "object": "model", "created": 0, "owned_by": "tests"}],
                },
            )
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if fake._stopped:  # a kept-alive connection to a stopped server: closed without an answer
            self.close_connection = True
            return
        route = self.path.rstrip("/")
        if route in ("/v1/completions", "/completions") and fake.completions_route:
            self._text_completion(fake, raw)
            return
        if route not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            in_flight = fake.in_flight
        try:
            self._chat(fake, raw, in_flight)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _bad_request(self, fake: FakeLLMServer, entry: dict[str, Any], exc: Exception) -> None:
        entry.update(key=None, status=400, outcome="bad_request")
        fake._record(entry)
        self._send(400, {"error": {"message": f"invalid request: {exc}", "type": "invalid_request_error"}})

    def _chat(self, fake: FakeLLMServer, raw: bytes, in_flight: int) -> None:
        entry: dict[str, Any] = {"time": time.time(), "in_flight": in_flight}
        try:
            req = json.loads(raw or b"{}")
            messages = req["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError) as exc:
            self._bad_request(fake, entry, exc)
            return
        entry.update(
            key=messages_key(messages),
            request=request_hash(req),
            model=req.get("model"),
            seed=req.get("seed"),
            temperature=req.get("temperature"),
            max_tokens=req.get("max_tokens"),
            logprobs=req.get("top_logprobs") if req.get("logprobs") else None,
            prefill=False,
        )
        if fake.require_key is not None and self.headers.get("Authorization") != f"Bearer {fake.require_key}":
            entry.update(status=401, outcome="unauthorized")
            fake._record(entry)
            self._send(401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
            return
        if fake.models is not None and req.get("model") not in fake.models:
            entry.update(status=404, outcome="no_model")
            fake._record(entry)
            msg = f"The model `{req.get('model')}` does not exist."
            self._send(404, {"error": {"message": msg, "type": "NotFoundError", "code": 404}})
            return
        outcome = fake._draw_outcome()
        if fake.latency_s > 0:
            time.sleep(fake.latency_s)
        if outcome == "timeout":
            entry.update(status=0, outcome="timeout")
            fake._record(entry)
            time.sleep(fake.delay_s)
            self._send(200, self._completion(fake, req, "late answer"))
            return
        if outcome == "drop":  # close the connection without any answer
            entry.update(status=0, outcome="drop")
            fake._record(entry)
            self.close_connection = True
            return
        if outcome in ("429", "500", "503", "400", "401", "403", "404"):
            status = int(outcome)
            entry.update(status=status, outcome=outcome)
            fake._record(entry)
            headers = {"Retry-After": fake.retry_after} if status == 429 and fake.retry_after is not None else {}
            kind = {429: "rate_limit_exceeded", 400: "invalid_request_error", 401: "invalid_request_error"}.get(
                status, "server_error"
            )
            self._send(status, {"error": {"message": f"injected {status}", "type": kind}}, headers)
            return
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        prefill = last.get("role") == "assistant" and (
            fake.prefill == "llamacpp" or (fake.prefill == "vllm" and bool(req.get("continue_final_message")))
        )
        if prefill and str(last.get("content", "")).rstrip().endswith("[["):
            toks, tops = _rating_positions(rating_distribution(messages[:-1]))
            payload = self._completion(fake, req, "".join(toks), (toks, tops))
        else:
            payload = self._completion(fake, req, fake.responder(req))
        entry.update(status=200, outcome="ok", prefill=prefill)
        fake._record(entry)
        self._send(200, payload)

    def _text_completion(self, fake: FakeLLMServer, raw: bytes) -> None:
        """``/v1/completions``: a prompt ending in ``[[`` gets a rating continuation, keyed by the prompt before
        the ``[[``; any other prompt goes to the responder as one user message. Logprobs in the completions
        shape (``logprobs: k``)."""
        entry: dict[str, Any] = {"time": time.time(), "in_flight": fake.in_flight}
        try:
            req = json.loads(raw or b"{}")
            prompt = req["prompt"]
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            self._bad_request(fake, entry, exc)
            return
        k = req.get("logprobs")
        entry.update(
            key=messages_key(prompt),
            request=request_hash(req),
            model=req.get("model"),
            seed=req.get("seed"),
            temperature=req.get("temperature"),
            max_tokens=req.get("max_tokens"),
            logprobs=k,
            prefill=prompt.rstrip().endswith("[["),
        )
        chat_req = {**req, "messages": [{"role": "user", "content": prompt}], "logprobs": bool(k), "top_logprobs": k}
        if entry["prefill"]:
            toks, tops = _rating_positions(rating_distribution(prompt.rstrip()[:-2]))
            body = self._completion(fake, chat_req, "".join(toks), (toks, tops))
        else:
            body = self._completion(fake, chat_req, fake.responder(chat_req))
        choice = body["choices"][0]
        lp = choice["logprobs"]
        if lp is not None and "content" in lp:  # the completions API always uses the legacy shape
            lp = {
                "tokens": [c["token"] for c in lp["content"]],
                "token_logprobs": [c["logprob"] for c in lp["content"]],
                "top_logprobs": [{a["token"]: a["logprob"] for a in c["top_logprobs"]} for c in lp["content"]],
            }
        body["object"] = "text_completion"
        body["choices"] = [
            {"index": 0, "text": choice["message"]["content"], "logprobs": lp, "finish_reason": choice["finish_reason"]}
        ]
        entry.update(status=200, outcome="ok")
        fake._record(entry)
        self._send(200, body)

    @staticmethod
    def _completion(fake: FakeLLMServer, req: dict, reply: str, rating: tuple | None = None) -> dict:
        max_tokens = req.get("max_tokens")
        finish = "stop"
        if rating is not None:  # a rating continuation: its tokens are the unit
            toks, tops = rating
            if isinstance(max_tokens, int) and len(toks) > max_tokens:
                toks, tops, finish = toks[:max_tokens], tops[:max_tokens], "length"
            reply, n_completion = "".join(toks), len(toks)
        else:
            words = reply.split()
            if isinstance(max_tokens, int) and len(words) > max_tokens:
                words = words[:max_tokens]
                reply = " ".join(words)
                finish = "length"
            n_completion = len(words)
            toks, tops = _text_positions(reply)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in req["messages"])
        logprobs = None
        if fake.logprobs and req.get("logprobs"):
            logprobs = _logprobs_payload(toks, tops, int(req.get("top_logprobs") or 0), fake.logprobs_shape)
        return {
            "id": "chatcmpl-" + messages_key(req["messages"])[:12],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model") or fake.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n_completion,
                "total_tokens": prompt_tokens + n_completion,
            },
        }


def _logprobs_payload(toks: list[str], tops: list[list[tuple[str, float]]], k: int, shape: str) -> dict:
    def chosen_lp(tok: str, alts: list[tuple[str, float]]) -> float:
        return next((lp for t, lp in alts if t == tok), math.log(0.5))

    if shape == "completions":
        return {
            "tokens": toks,
            "token_logprobs": [chosen_lp(t, a) for t, a in zip(toks, tops)],
            "top_logprobs": [dict(a[:k]) for a in tops],
            "text_offset": [sum(len(x) for x in toks[:i]) for i in range(len(toks))],
        }
    content = []
    for t, alts in zip(toks, tops):
        content.append(
            {
                "token": t,
                "logprob": chosen_lp(t, alts),
                "bytes": list(t.encode("utf-8")),
                "top_logprobs": [{"token": a, "logprob": lp, "bytes": list(a.encode("utf-8"))} for a, lp in alts[:k]],
            }
        )
    return {"content": content}


def longbench_chat_cli(folder: Any, out: Any, url: str, *extra: str) -> list[str]:
    """``longalign eval longbench-chat`` as a subprocess command against a fake server at ``url`` for both the
    model under test and the judge (one judge request in flight, 64 new tokens, no progress bars)."""
    return [
        sys.executable,
        "-m",
        "longalign.cli",
        "eval",
        "longbench-chat",
        "--data",
        str(folder),
        "--run",
        str(out),
        "--model",
        "openai:model-under-test",
        "--model-base-url",
        url,
        "--judge",
        "openai:judge-x",
        "--judge-base-url",
        url,
        "--judge-max-in-flight",
        "1",
        *extra,
        "--max-new-tokens",
        "64",
        "--progress",
        "false",
    ]


def start_server_process(
    workdir: str | Path,
    *,
    fail_rate: float = 0.0,
    responder: str = "echo",
    latency: float = 0.0,
    delay: float = 2.0,
    seed: int = 0,
    log_path: str | Path | None = None,
    timeout: float = 10.0,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start this server in a child process; returns ``(process, base_url)`` once it listens."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"fake_llm_port.{os.getpid()}.{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--port-file",
        str(port_file),
        "--fail-rate",
        str(fail_rate),
        "--responder",
        responder,
        "--latency",
        str(latency),
        "--delay",
        str(delay),
        "--seed",
        str(seed),
    ]
    if log_path:
        cmd += ["--log", str(log_path)]
    cmd += list(extra_args or [])
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.is_file():
            port = int(port_file.read_text().strip())
            return proc, f"http://127.0.0.1:{port}/v1"
        if proc.poll() is not None:
            raise RuntimeError(f"fake LLM server exited with code {proc.returncode}")
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError(f"fake LLM server did not start within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OpenAI-compatible fake chat server for tests")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True, help="file that receives the port once listening")
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--fail-kinds", default="429,500,timeout", help="comma list among 429,500,503,timeout,drop")
    ap.add_argument("--fail-after", type=int, default=0, help="random failures start after this many answers")
    ap.add_argument("--require-key", default=None, help="answer 401 to requests without this bearer key")
    ap.add_argument("--models", default="", help="comma list of served models (others get 404; empty = any)")
    ap.add_argument("--delay", type=float, default=2.0, help="seconds a 'timeout' failure holds the reply")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", default=None, help="jsonl request log")
    ap.add_argument("--responder", default="echo")
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--retry-after", default=None)
    ap.add_argument("--prefill", default="vllm", choices=["vllm", "llamacpp", "none"])
    ap.add_argument("--no-logprobs", action="store_true", help="ignore logprobs requests (send logprobs: null)")
    args = ap.parse_args(argv)
    kinds = {k.strip(): 1.0 for k in args.fail_kinds.split(",") if k.strip()}
    server = FakeLLMServer(
        responder=args.responder,
        fail_rate=args.fail_rate,
        fail_kinds=kinds,
        delay_s=args.delay,
        latency_s=args.latency,
        seed=args.seed,
        log_path=args.log,
        model=args.model,
        retry_after=args.retry_after,
        require_key=args.require_key,
        models=[m for m in args.models.split(",") if m] or None,
        fail_after=args.fail_after,
        port=args.port,
        prefill=args.prefill,
        logprobs=not args.no_logprobs,
    ).start()
    port_file = Path(args.port_file)
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(str(server.port))
    os.replace(tmp, port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

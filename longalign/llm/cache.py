"""Request cache: one small JSON file per answered request, so paid work is never paid for twice.

The key is the SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of
``{"model": <backend-qualified model>, "messages": [...], "params": SamplingParams.to_dict()}``.
Two requests that differ in any message byte, in the model or in any sampling setting get different keys;
the same request always gets the same key, across processes and machines.

Layout: ``<cache_dir>/<key[:2]>/<key>.json``, each written through a temporary file, ``fsync`` and an
atomic rename. Trade-off against one append-only jsonl: a file per entry costs one inode (~4 KiB of disk)
per request, about 8 MiB for the 2,000 requests of a typical data-generation run, but needs no lock
between threads or processes, cannot be left with a torn record (a reader sees the old state or the
whole entry) and loads lazily (no start-up scan of a file of hundreds of MiB of answers). A response is
stored the moment it arrives, so a crash, ``SIGKILL`` or Ctrl-C right after a success loses nothing.

The prompt itself is not stored (long-context prompts are 10k+ tokens each); an entry holds the answer,
its usage, the model, the sampling settings and a SHA-256 of the messages for auditing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from longalign.llm.base import ChatResult, Messages, SamplingParams
from longalign.rundir import atomic_write_json

log = logging.getLogger(__name__)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def messages_hash(messages: Messages) -> str:
    """SHA-256 of the canonical JSON of ``messages`` (also what the test server logs per request)."""
    return hashlib.sha256(canonical_json(messages).encode("utf-8")).hexdigest()


def request_key(model: str, messages: Messages, params: SamplingParams) -> str:
    """Cache key of one request (see module docstring)."""
    payload = {"model": model, "messages": messages, "params": params.to_dict()}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class RequestCache:
    """Thread- and process-safe store of answered requests under ``root`` (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> ChatResult | None:
        """The stored answer for ``key`` (``cached=True``), or None. An unreadable entry counts as a miss."""
        path = self.path(key)
        try:
            with path.open(encoding="utf-8") as fh:
                entry = json.load(fh)
            res = entry["result"]
            return ChatResult(
                text=res["text"],
                prompt_tokens=int(res.get("prompt_tokens", 0)),
                completion_tokens=int(res.get("completion_tokens", 0)),
                model=res.get("model", ""),
                cached=True,
                latency=0.0,
                finish_reason=res.get("finish_reason"),
                extra=dict(res.get("extra") or {}),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cache entry %s (%s); the request will be sent again", path, exc)
            return None

    def put(self, key: str, result: ChatResult, *, model: str, messages: Messages, params: SamplingParams) -> None:
        entry = {
            "key": key,
            "model": model,
            "messages_sha256": messages_hash(messages),
            "params": params.to_dict(),
            "result": {
                "text": result.text,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "model": result.model,
                "finish_reason": result.finish_reason,
                "latency": result.latency,
                "extra": result.extra,
            },
            "time": time.time(),
        }
        atomic_write_json(self.path(key), entry, indent=None)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for _ in self.root.glob("??/*.json"))

"""A spending cap for one command: at most ``max_requests`` requests sent and at most ``max_cost`` spent.

:class:`CachingClient` asks the budget before every attempt it sends to the backend (a retry is an attempt
too); an answer from the request cache never reaches the budget, so it is free. The cap is per command:
a re-run starts with a fresh budget, replays from the cache everything answered before, and pays only for
the rest.

Cost is in the unit of the prices (``price_in_per_mtok`` / ``price_out_per_mtok``, per million tokens):
``max_cost=2`` with prices in dollars means two dollars. A request is sent only if what was spent, plus
what the requests already in flight may still cost, plus the most this request may cost fits under the
cap. The most a request may cost is not known in advance, so it is bounded:

* completion tokens: at most ``max_tokens`` (the server cuts there);
* prompt tokens: the characters of its messages times the tokens-per-character ratio measured on the
  answers seen so far (each answer reports its exact prompt tokens), plus 4 per message; before the first
  answer, 0.5 tokens per character (English runs at about 0.25, Chinese at up to 1).

Once a request is refused the budget stays closed, so the job ends at a clean point rather than slipping
cheaper requests in after the refusal; in-flight requests still finish and are cached. The actual spend
is counted from the usage the server reports, so a server that omits usage (counts of 0) cannot be held to
a cost cap; ``max_requests`` still holds.
"""

from __future__ import annotations

import threading
from typing import Any

from longalign.llm.base import LLMBudgetExceeded, Messages, SamplingParams

FIRST_TOKENS_PER_CHAR = 0.5
TOKENS_PER_MESSAGE = 4


def cost_of(
    prompt_tokens: int, completion_tokens: int, price_in_per_mtok: float | None, price_out_per_mtok: float | None
) -> float:
    """What a request (or a sum of requests) costs at per-million-token prices, in the prices' unit; an unset
    price counts as 0. The one place that turns token counts and prices into money."""
    return (prompt_tokens * (price_in_per_mtok or 0.0) + completion_tokens * (price_out_per_mtok or 0.0)) / 1e6


def _chars(messages: Messages) -> int:
    return sum(len(str(m.get("content", ""))) for m in messages)


class Budget:
    """Thread-safe caps on requests sent and money spent by one client (None = no cap)."""

    def __init__(
        self,
        *,
        max_cost: float | None = None,
        max_requests: int | None = None,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
    ):
        if max_cost is not None:
            if max_cost < 0:
                raise ValueError(f"max_cost must be >= 0, got {max_cost}")
            if not (price_in_per_mtok or price_out_per_mtok):
                raise ValueError(
                    "max_cost needs a price: give price_in_per_mtok and/or price_out_per_mtok "
                    "(--price-in-per-mtok/--price-out-per-mtok); the cap is in their unit"
                )
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {max_requests}")
        self.max_cost = None if max_cost is None else float(max_cost)
        self.max_requests = None if max_requests is None else int(max_requests)
        self.price_in = float(price_in_per_mtok or 0.0)
        self.price_out = float(price_out_per_mtok or 0.0)
        self._lock = threading.Lock()
        self.sent = 0
        self.spent = 0.0
        self.reserved = 0.0
        self._prompt_tokens = 0
        self._prompt_chars = 0
        self.refusal: str | None = None

    @property
    def active(self) -> bool:
        return self.max_cost is not None or self.max_requests is not None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return cost_of(prompt_tokens, completion_tokens, self.price_in, self.price_out)

    def _ratio(self) -> float:
        if self._prompt_chars > 0 and self._prompt_tokens > 0:
            return self._prompt_tokens / self._prompt_chars
        return FIRST_TOKENS_PER_CHAR

    def estimate(self, messages: Messages, params: SamplingParams) -> float:
        """The most this request is expected to cost (see the module docstring)."""
        with self._lock:
            ratio = self._ratio()
        prompt = _chars(messages) * ratio + TOKENS_PER_MESSAGE * len(messages)
        return self.cost(int(prompt + 0.999), int(params.max_tokens))

    def acquire(self, messages: Messages, params: SamplingParams) -> float:
        """Reserve room for one request, or raise :class:`LLMBudgetExceeded`; returns the amount reserved,
        to be passed to :meth:`settle` when the attempt ends."""
        if not self.active:
            return 0.0
        need = self.estimate(messages, params) if self.max_cost is not None else 0.0
        with self._lock:
            if self.refusal is None:
                if self.max_requests is not None and self.sent >= self.max_requests:
                    self.refusal = f"request cap reached: {self.sent} request(s) sent, max_requests={self.max_requests}"
                elif self.max_cost is not None and self.spent + self.reserved + need > self.max_cost:
                    self.refusal = (
                        f"cost cap reached: spent {self.spent:.6g} (+{self.reserved:.6g} in flight), the next "
                        f"request may cost up to {need:.6g}, max_cost={self.max_cost:g}"
                    )
            if self.refusal is not None:
                raise LLMBudgetExceeded(self.message(), spent=self.spent, sent=self.sent)
            self.sent += 1
            self.reserved += need
        return need

    def settle(self, reserved: float, result: Any = None, messages: Messages | None = None) -> None:
        """An attempt ended: release its reservation and count what it cost (``result`` None = no answer)."""
        if not self.active:
            return
        with self._lock:
            self.reserved = max(0.0, self.reserved - reserved)
            if result is not None:
                p, c = int(result.prompt_tokens or 0), int(result.completion_tokens or 0)
                self.spent += self.cost(p, c)
                if messages is not None and p > 0:
                    self._prompt_tokens += max(0, p - TOKENS_PER_MESSAGE * len(messages))
                    self._prompt_chars += _chars(messages)

    def message(self) -> str:
        return (
            f"stopped before spending more: {self.refusal}. Everything answered so far is in the request "
            "cache and the outputs; re-run the same command with a higher --max-cost/--max-requests (or "
            "without them) to continue: cached answers are not paid again"
        )

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "max_cost": self.max_cost,
                "max_requests": self.max_requests,
                "sent": self.sent,
                "spent": round(self.spent, 6),
                "stopped": self.refusal,
            }

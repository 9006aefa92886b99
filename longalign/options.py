"""Option groups shared across stages: an LLM endpoint (the Self-Instruct generator, the eval judge, an endpoint
model under test) and its prices. Compose them into a stage config by inheritance (flags and YAML keys stay
flat), or reuse one option under another name with :func:`longalign.config.option_of`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from longalign.config import Options, option
from longalign.rundir import ON_ERROR


@dataclass
class PriceOptions(Options):
    """LLM prices and spending caps."""

    price_in_per_mtok: float | None = option(
        None, minimum=0, help="price per million prompt tokens (for the cost figures; unset = no cost)"
    )
    price_out_per_mtok: float | None = option(None, minimum=0, help="price per million completion tokens")
    max_cost: float | None = option(
        None,
        minimum=0,
        help="stop before a priced LLM request (the generator's in data generate, the judge's in eval) could take "
        "this command's spend past this amount, in the unit of the prices (needs --price-in-per-mtok/"
        "--price-out-per-mtok); cached answers are free, and a re-run continues from the cache with a fresh cap "
        "(unset = no cap)",
    )
    max_requests: int | None = option(
        None,
        minimum=0,
        help="stop before sending more than this many priced LLM requests in this command (retries count; cached "
        "answers do not; unset = no cap)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_cost is not None and not (self.price_in_per_mtok or self.price_out_per_mtok):
            raise ValueError(
                f"max_cost={self.max_cost:g} needs the prices it is counted in: give --price-in-per-mtok "
                "and/or --price-out-per-mtok (per million tokens, in the unit of the cap)"
            )


@dataclass
class EndpointOptions(PriceOptions):
    """LLM endpoint (OpenAI-compatible API)."""

    base_url: str | None = option(
        None, help="base URL of the OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1; default: api.openai.com)"
    )
    api_key_env: str = option("OPENAI_API_KEY", help="environment variable holding the API key (never stored)")
    max_in_flight: int = option(8, minimum=1, help="requests in flight at once (a local model runs one at a time)")
    max_retries: int = option(
        6, minimum=0, help="retries of a failed request (429, 5xx, timeout) before it counts as failed"
    )
    timeout: float = option(120.0, minimum=0, help="seconds to wait for one HTTP response")
    backoff_base: float = option(1.0, minimum=0, help="first retry waits about this many seconds, doubling each retry")
    backoff_max: float = option(60.0, minimum=0, help="longest wait between retries, in seconds")
    stop_after_failures: int = option(
        5,
        minimum=0,
        help="stop the job when this many requests in a row have failed after all their retries (0 = never); "
        "before the endpoint has answered once, 3 connection failures or one HTTP 401/403/404 stop it",
    )

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`longalign.llm.make_client` for this endpoint: every option of this group
        (connection, retries, concurrency, prices and spending cap), each under its own name."""
        return {f.name: getattr(self, f.name) for f in fields(EndpointOptions)}


@dataclass
class InputErrorOptions(Options):
    """Bad input records."""

    on_error: str = option(
        "raise",
        choices=ON_ERROR,
        help="bad records in input files (invalid JSON, wrong shape, missing field): raise an error naming "
        "file:line, or skip them, counted by reason and listed (file:line) in the summary",
    )

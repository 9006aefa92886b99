"""Option groups of the eval configs, each option declared once: the model under test, answer generation and
the judge. The benchmark configs compose them by inheritance (flags and YAML keys stay flat) and override
defaults with :func:`longalign.config.redefault`; ``--help`` lists each group under its own heading."""

from __future__ import annotations

from dataclasses import dataclass

from longalign.config import Options, option, option_of
from longalign.llm.client import parse_spec
from longalign.options import EndpointOptions, PriceOptions

LOCAL_SCORES = ("expected", "argmax")  # the score of a rating distribution: its expected value or its argmax
LOGPROB_MODES = ("off", "fallback", "first")  # when an endpoint judge reads the rating from top_logprobs
PREFILL_MODES = ("chat", "completions")  # how an endpoint judge forces the reply to start with "[["


def check_judge_spec(spec: str | None) -> None:
    """A judge must name its backend: ``openai:<model>`` or ``local:<model spec>`` (a bare spec is refused)."""
    try:
        parse_spec(spec, require_prefix=True)
    except ValueError as exc:
        raise ValueError(
            f"judge={spec!r} is not accepted; use 'openai:<model>' (with --judge-base-url) or "
            f"'local:<model spec>' (e.g. local:smollm2): {exc}"
        ) from None


@dataclass
class ModelOptions(Options):
    """Model under test."""

    model: str = option(
        "smollm2",
        help="model to evaluate: smollm2 (embedded), HF id, train output folder, or "
        "openai:<model> with --model-base-url",
    )
    model_base_url: str | None = option_of(EndpointOptions, "base_url", subject="endpoint serving --model")
    model_api_key_env: str = option_of(EndpointOptions, "api_key_env", subject="endpoint serving --model")
    tokenizer: str = option(
        "", help="tokenizer that builds and truncates prompts of an endpoint model (default: embedded)"
    )

    def model_endpoint(self) -> EndpointOptions:
        """The endpoint serving an ``openai:<model>`` under test: ``--model-base-url`` and ``--model-api-key-env``,
        the other endpoint options at their defaults."""
        return EndpointOptions(base_url=self.model_base_url or None, api_key_env=self.model_api_key_env)


@dataclass
class SamplingOptions(Options):
    """Answer generation."""

    max_new_tokens: int = option(1024, minimum=0, help="tokens to generate per answer")
    temperature: float = option(0.0, minimum=0, help="sampling temperature for answers (0 = greedy)")
    top_p: float = option(1.0, minimum=0, maximum=1, help="nucleus sampling for answers")
    seed: int = option(42, help="generation seed (per case; per batch when batch_size > 1)")


@dataclass
class GenerationOptions(SamplingOptions):
    """Answer generation."""

    batch_size: int = option(1, minimum=1, help="prompts generated together (local models)")
    max_len: int = option(
        64000,
        minimum=1,
        aliases=("max_length",),
        help="middle-truncate prompts to this many tokens before the chat template",
    )
    fit_to_model: bool = option(
        False,
        help="when max_len plus the answer budget exceeds the model's positions, middle-truncate every prompt to "
        "what fits instead of refusing to start",
    )


@dataclass
class JudgeOptions(Options):
    """Judge."""

    judge: str = option("", help="openai:<model> (with --judge-base-url) or local:<model spec>; empty = no judge")
    judge_base_url: str | None = option_of(EndpointOptions, "base_url", subject="judge endpoint")
    judge_api_key_env: str = option_of(EndpointOptions, "api_key_env", subject="judge endpoint")
    judge_max_in_flight: int = option_of(EndpointOptions, "max_in_flight", default=4, subject="judge endpoint")
    judge_temperature: float = option(0.0, minimum=0, help="judge temperature")
    judge_max_tokens: int = option(1024, minimum=1, help="judge reply budget")
    judge_max_attempts: int = option(5, minimum=1, help="judge requests per rating when no [[rating]] parses")
    local_score: str = option(
        "expected",
        choices=LOCAL_SCORES,
        help="score from a rating distribution (a local judge, or an endpoint judge scored by logprobs): its "
        "expected value or its argmax",
    )
    judge_logprobs: str = option(
        "fallback",
        choices=LOGPROB_MODES,
        help="endpoint judge: read the rating from top_logprobs after a prefilled '[[' (vLLM, llama.cpp) "
        "when the reply has no [[rating]] (fallback), before any free-text reply (first), or never (off)",
    )
    judge_top_logprobs: int = option(20, minimum=1, help="top_logprobs asked for in logprob scoring")
    judge_prefill: str = option(
        "chat",
        choices=PREFILL_MODES,
        help="how logprob scoring forces '[[': an assistant message the server continues (chat: vLLM, llama.cpp's "
        "llama-server), or a prompt rendered with --judge-tokenizer's chat template sent to /v1/completions "
        "(completions: servers that start a new turn, e.g. llama-cpp-python's)",
    )
    judge_tokenizer: str = option(
        "",
        help="model spec whose chat template renders the judge prompt for --judge-prefill completions "
        "(default: the embedded model's)",
    )
    judge_give_up_after: int = option(
        3,
        minimum=0,
        help="stop judging when none of the first N cases gets a rating (0 = never stop)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.judge:
            check_judge_spec(self.judge)

    def judge_endpoint(self) -> EndpointOptions:
        """The endpoint of an ``openai:<model>`` judge: the ``judge_*`` connection options, with the prices and
        spending cap of a config that has them (:class:`longalign.options.PriceOptions`); the other endpoint
        options at their defaults."""
        prices = self if isinstance(self, PriceOptions) else PriceOptions()
        return EndpointOptions(
            base_url=self.judge_base_url or None,
            api_key_env=self.judge_api_key_env,
            max_in_flight=self.judge_max_in_flight,
            price_in_per_mtok=prices.price_in_per_mtok,
            price_out_per_mtok=prices.price_out_per_mtok,
            max_cost=prices.max_cost,
            max_requests=prices.max_requests,
        )


@dataclass
class SeededJudgeOptions(JudgeOptions):
    """Judge."""

    judge_seed: int = option(
        0, help="seed of the judge requests (and of the example order, where examples are shuffled)"
    )

"""LLM access behind one client protocol (see ``longalign.llm.base``)."""

from longalign.llm.base import ChatResult, LLMClient, SamplingParams  # noqa: F401

"""Shared pytest fixtures.

``fake_llm``: a real OpenAI-compatible HTTP server on 127.0.0.1 (``tests/fake_llm_server.py``) running in a
thread for the test; yields the :class:`FakeLLMServer` with ``.base_url``, ``.requests`` (request log),
``.set_responder(fn)``, ``.fail_rate`` (settable), ``.script([...])`` and ``.max_in_flight``.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_llm_server import FakeLLMServer  # noqa: E402


@pytest.fixture
def fake_llm():
    server = FakeLLMServer(responder="echo", seed=0).start()
    try:
        yield server
    finally:
        server.stop()

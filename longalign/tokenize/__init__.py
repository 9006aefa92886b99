"""The tokenize stage: chat formats (:mod:`.formats`) and the encoder that writes ``tokens/`` (:mod:`.encode`).

``run(cfg, run_dir)`` tokenizes ``<run>/data/mixed.jsonl`` into ``<run>/tokens`` and records the stage;
:func:`tokenize_file` does the same between any two paths without a run directory.
"""

from longalign.tokenize.encode import (
    TokenizeConfig,
    TokenizeResult,
    load_tokens,
    run,
    tokenize_conversation,
    tokenize_file,
)

__all__ = ["TokenizeConfig", "TokenizeResult", "load_tokens", "run", "tokenize_conversation", "tokenize_file"]

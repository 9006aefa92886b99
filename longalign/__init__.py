"""LongAlign Workbench: the LongAlign recipe for long-context SFT (data, efficient training, evaluation).

Stages (each a module with a small public API, writing into a run directory, see ``longalign.rundir``):

    corpus / selfinstruct / shortdata  ->  data/long.jsonl, data/mixed.jsonl
    tokenize                           ->  tokens/ (Arrow, ragged, labels on assistant tokens)
    batching                           ->  batching/<method>.json (+ .plan.json)
    train                              ->  train/<method>/metrics.jsonl, checkpoints
    eval                               ->  eval/<benchmark>/...

The library never parses argv and never prints; the CLI (``longalign.cli``), the notebooks and the
Streamlit app only call it.
"""

__version__ = "0.1.0"

IGNORE_INDEX = -100

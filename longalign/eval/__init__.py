"""Evaluation stage: LongBench-Chat, Needle-in-a-Haystack and judged LongBench, plus judge agreement.

Modules: :mod:`~longalign.eval.generate` (answers from a local model or an endpoint, middle truncation,
resumable predictions), :mod:`~longalign.eval.judge` (``[[rating]]`` parsing, endpoint and local judges),
:mod:`~longalign.eval.longbench_chat`, :mod:`~longalign.eval.needle`, :mod:`~longalign.eval.longbench`,
:mod:`~longalign.eval.agreement`, and :mod:`~longalign.eval.cli` (``longalign eval ...``). Output files and
their fields are listed in ``longalign.rundir`` (``eval/<benchmark>/``).
"""

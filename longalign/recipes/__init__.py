"""Recipes: experiments composed from the stages, above the library and below the surfaces.

* :mod:`.demo` (``longalign demo``): every stage's ``run()`` in order on the embedded model, into one run directory;
* :mod:`.ablation` (``longalign experiment ablation``, ``benchmarks/ablation.py``): batching x loss weighting,
  trained and measured on a CPU;
* :mod:`.screenshots` (``python -m longalign.recipes.screenshots``): every dashboard page of a real run, shot in
  headless Chromium.

A recipe imports the stage packages' faces (their public functions and configs), the views and the shared
modules, never a command; its own command sits beside it (``demo_cli``, ``ablation/cli.py``,
``screenshots/__main__.py``) on the surfaces floor. Every future experiment belongs here.
"""

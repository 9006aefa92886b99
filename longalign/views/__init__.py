"""What the dashboard shows, computed from a run directory: pandas tables and plotly figures.

One module per dashboard page -- :mod:`.home` (runs overview), :mod:`.lengths`, :mod:`.packing`,
:mod:`.simulator`, :mod:`.training`, :mod:`.longbench_chat`, :mod:`.needle`, :mod:`.ladder` -- over one module of
readers (:mod:`.readers`: the artifact registry, :class:`~.readers.MissingArtifact`, and every read of a run-directory
file, through the :class:`~longalign.rundir.RunDir` accessors) and one of style (:mod:`.style`: template,
palette, method colours). Every function is a pure function of the files a run directory holds or of the
tables derived from them, so the Streamlit pages stay thin (inputs -> guard -> one call here -> render) and
each view is unit-tested without a browser.

Arrows point down: views import the stages (:func:`longalign.tokenize.load_tokens`,
:class:`longalign.batching.Plan`, :func:`longalign.batching.token_weights`, :func:`longalign.batching.simulate`,
:func:`longalign.eval.needle.heatmap_figure`) and their constants, and never re-derive them; no stage imports
a view. The token table never materialises the ragged token columns and masks are downsampled before they
reach the browser (see :mod:`.readers` and :mod:`.packing`).
"""

from longalign.views import (  # noqa: F401
    home,
    ladder,
    lengths,
    longbench_chat,
    needle,
    packing,
    readers,
    simulator,
    style,
    training,
)
from longalign.views.readers import ARTIFACTS, MissingArtifact

__all__ = [
    "ARTIFACTS",
    "MissingArtifact",
    "home",
    "ladder",
    "lengths",
    "longbench_chat",
    "needle",
    "packing",
    "readers",
    "simulator",
    "style",
    "training",
]

"""Deprecated: the dashboard's views moved to :mod:`longalign.views` (one module per page over
:mod:`longalign.views.readers`). This module only re-exports the names the notebooks still use and will be
removed once they import :mod:`longalign.views` themselves; new code imports from there.
"""

from __future__ import annotations

from longalign.views.lengths import fig_length_distribution, mix_summary
from longalign.views.needle import fig_needle_heatmap, highlight, needle_grid
from longalign.views.packing import (batch_table, batch_view, default_batch, fig_attention_mask, fig_batch_fill,
                                     fig_method_comparison, fig_token_strip, method_comparison)
from longalign.views.readers import (ARTIFACTS, MissingArtifact, load_metrics, load_needle, load_token_meta,
                                     load_token_table)
from longalign.views.simulator import fig_simulation, load_simulation
from longalign.views.training import fig_loss, fig_throughput, train_summary

__all__ = ["ARTIFACTS", "MissingArtifact", "batch_table", "batch_view", "default_batch", "fig_attention_mask",
           "fig_batch_fill", "fig_length_distribution", "fig_loss", "fig_method_comparison", "fig_needle_heatmap",
           "fig_simulation", "fig_throughput", "fig_token_strip", "highlight", "load_metrics", "load_needle",
           "load_simulation", "load_token_meta", "load_token_table", "method_comparison", "mix_summary",
           "needle_grid", "train_summary"]

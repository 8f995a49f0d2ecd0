"""Analysis of embedding stores: summaries over time windows, change, anomalies, similarity.

Reads embedding stores (or the lazy result of :func:`latentcube.embed`), never model
internals, and needs no torch. Results are ``xarray.Dataset`` objects on the input's
grid and CRS, lazy on Dask-backed input:

* :func:`summarise`: one vector per pixel per window (mean, median, std, quantiles
  of the valid dates; counts; optional quality weighting); :func:`plot_summary`
  draws the windows as RGB with their counts;
* :func:`change`: distance between two periods' summaries per pixel;
  :func:`anomaly`: per-date distance from the pixel's seasonal expectation in other
  years; :func:`plot_change` draws a map;
* :func:`similar`: cosine similarity and whitened distance of every pixel-date to
  example pixels; :func:`plot_similarity` draws the maps.
"""

from __future__ import annotations

from latentcube.analysis.change import anomaly, change, plot_change, robust_zscore
from latentcube.analysis.similarity import plot_similarity, similar
from latentcube.analysis.summary import make_windows, plot_summary, summarise

__all__ = [
    "anomaly",
    "change",
    "make_windows",
    "plot_change",
    "plot_similarity",
    "plot_summary",
    "robust_zscore",
    "similar",
    "summarise",
]

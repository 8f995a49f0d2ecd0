"""Analysis of embedding stores: summaries over time windows, change, anomalies, similarity.

Reads embedding stores (or the lazy result of :func:`latentcube.embed`), never model
internals, and needs no torch. Every function is lazy on Dask-backed input.
"""

from __future__ import annotations

from latentcube.analysis.summary import make_windows, summarise

__all__ = ["make_windows", "summarise"]

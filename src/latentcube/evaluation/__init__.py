"""Evaluation of embedding cubes: GPP at flux towers, semantic probes, baselines, reports.

One module per task (``gpp``, ``landcover``, ``croptype``, ``reconstruction``),
plus ``flux`` (readers), ``features`` (site features), ``baselines``, ``probes``
and ``report``. Everything reads *feature cubes* ``(feature, time, y, x)`` and
flux files; nothing here depends on how an embedding was computed.
"""

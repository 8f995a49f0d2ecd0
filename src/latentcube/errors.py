"""Exception types, one per layer, all deriving from :class:`LatentcubeError`."""

from __future__ import annotations

__all__ = [
    "CubeError",
    "EmbeddingError",
    "EvaluationError",
    "LatentcubeError",
    "ModelError",
    "OutputError",
    "RecipeError",
    "StacError",
]


class LatentcubeError(Exception):
    """Base class of every error raised on purpose by latentcube."""


class CubeError(LatentcubeError, ValueError):
    """A cube does not follow the data model of :mod:`latentcube.cube.schema`."""


class ModelError(LatentcubeError, ValueError):
    """A model, checkpoint or bundle is invalid or does not fit its input."""


class StacError(LatentcubeError, RuntimeError):
    """A STAC search or load could not produce a cube."""


class EmbeddingError(LatentcubeError, ValueError):
    """Embedding options or an embedding store are invalid (edge policy, chunks, store)."""


class EvaluationError(LatentcubeError, ValueError):
    """A flux file or an evaluation input (flux data, features, labels) is invalid."""


class OutputError(LatentcubeError, OSError):
    """An output path cannot be written safely (it is an input, in use, or not writable)."""


class RecipeError(LatentcubeError, ValueError):
    """A recipe (``latentcube reproduce``) that cannot run as configured."""

"""Linear and k-NN probes in spatially blocked cross-validation.

Shared by :mod:`~latentcube.evaluation.landcover` and
:mod:`~latentcube.evaluation.croptype`: samples are pixels (or pixel-dates)
with a class label and a spatial block id; the folds keep whole blocks
together, and blocks are larger than the 15 px model context, so a test pixel's
context never overlaps a training pixel's block interior (neighbouring pixels
cannot leak). Predictions of all folds are pooled before scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentcube.errors import EvaluationError

__all__ = ["PROBES", "block_ids", "blocked_cv", "filter_classes", "make_probe", "score_pooled"]

#: Probe classifiers: scaled logistic regression and scaled k-NN.
PROBES: tuple[str, ...] = ("logreg", "knn")


def block_ids(iy: np.ndarray, ix: np.ndarray, block: int, *, offset: int = 0) -> np.ndarray:
    """Id of the ``block`` x ``block`` pixel square holding each (row, col); ``offset`` per cube."""
    if block < 1:
        raise EvaluationError(f"block size must be >= 1 px, got {block}")
    iy, ix = np.asarray(iy), np.asarray(ix)
    return offset + (iy // block) * 100_000 + ix // block


def make_probe(kind: str, seed: int = 0, n_neighbors: int = 10) -> Any:
    """A scikit-learn pipeline: standard scaling + logistic regression or k-NN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        clf: Any = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=n_neighbors)
    else:
        raise EvaluationError(f"unknown probe {kind!r}; expected one of {PROBES}")
    return make_pipeline(StandardScaler(), clf)


def filter_classes(
    labels: np.ndarray, groups: np.ndarray, *, min_samples: int = 30, min_blocks: int = 2
) -> tuple[np.ndarray, dict[str, Any]]:
    """Keep classes with enough samples in enough blocks (others cannot be cross-validated).

    Returns
    -------
    tuple
        Boolean mask of kept samples and a record of the dropped classes.
    """
    keep = np.zeros(len(labels), bool)
    dropped: dict[str, Any] = {}
    for c in np.unique(labels):
        m = labels == c
        nb = len(np.unique(groups[m]))
        if m.sum() >= min_samples and nb >= min_blocks:
            keep |= m
        else:
            dropped[str(c)] = {"samples": int(m.sum()), "blocks": int(nb)}
    return keep, dropped


def blocked_cv(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    probes: Sequence[str] = PROBES,
    n_splits: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Cross-validated macro-F1 and per-class F1 of each probe on each feature set.

    Parameters
    ----------
    features
        Feature-set name -> (n_samples, n_features) array, all finite, same samples.
    labels
        (n_samples,) class labels.
    groups
        (n_samples,) spatial block ids; folds never split a block.
    probes
        Classifiers (:data:`PROBES`).
    n_splits
        Folds (capped by the number of blocks).
    seed
        Seed of the fold assignment and the classifiers.

    Returns
    -------
    dict
        ``result[feature_set][probe]`` = ``{"macro_f1", "per_class_f1", "accuracy"}``.
    """
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GroupKFold

    labels = np.asarray(labels)
    n_blocks = len(np.unique(groups))
    if n_blocks < 2:
        raise EvaluationError("blocked cross-validation needs at least two spatial blocks")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise EvaluationError(f"need at least two classes, got {classes.tolist()}")
    folds = list(
        GroupKFold(n_splits=min(n_splits, n_blocks), shuffle=True, random_state=seed).split(
            labels, labels, groups
        )
    )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, x in features.items():
        x = np.asarray(x, np.float64)
        if x.shape[0] != len(labels) or not np.isfinite(x).all():
            raise EvaluationError(f"feature set {name!r}: wrong length or non-finite values")
        out[name] = {}
        for kind in probes:
            pred = np.empty_like(labels)
            for tr, te in folds:
                model = make_probe(kind, seed).fit(x[tr], labels[tr])
                pred[te] = model.predict(x[te])
            per = f1_score(labels, pred, labels=classes, average=None, zero_division=0)
            out[name][kind] = {
                "macro_f1": float(np.mean(per)),
                "accuracy": float(accuracy_score(labels, pred)),
                "per_class_f1": {str(c): float(v) for c, v in zip(classes, per, strict=True)},
            }
    return out


def score_pooled(
    features: Mapping[str, Sequence[np.ndarray]],
    labels: Sequence[np.ndarray],
    groups: Sequence[np.ndarray],
    *,
    block: int,
    probes: Sequence[str] = PROBES,
    n_splits: int = 5,
    min_samples: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """Pool the samples of several cubes, drop rare classes and run :func:`blocked_cv`.

    Parameters
    ----------
    features
        Feature-set name -> one (n_i, d) array per cube.
    labels, groups
        One array of labels and of block ids per cube.
    block
        Block side in pixels (recorded in the result).
    probes, n_splits, seed
        See :func:`blocked_cv`.
    min_samples
        Classes with fewer samples (or in fewer than 2 blocks) are dropped.

    Returns
    -------
    dict
        ``scores``, ``class_counts``, ``dropped_classes``, ``n_samples``, ``n_blocks``,
        ``block_px`` and ``n_features``.
    """
    y_all, g_all = np.concatenate(labels), np.concatenate(groups)
    if len(y_all) == 0:
        raise EvaluationError("no sample is valid in every feature set")
    keep, dropped = filter_classes(y_all, g_all, min_samples=min_samples)
    x_all = {k: np.concatenate(v)[keep] for k, v in features.items()}
    y_all, g_all = y_all[keep], g_all[keep]
    scores = blocked_cv(x_all, y_all, g_all, probes=probes, n_splits=n_splits, seed=seed)
    kept = sorted(int(c) for c in np.unique(y_all))
    return {
        "scores": scores,
        "class_counts": {str(c): int((y_all == c).sum()) for c in kept},
        "dropped_classes": dropped,
        "n_samples": len(y_all),
        "n_blocks": len(np.unique(g_all)),
        "block_px": block,
        "n_features": {k: int(v.shape[1]) for k, v in x_all.items()},
    }

"""Linear and k-NN probes in spatially blocked cross-validation.

Shared by :mod:`~latentcube.evaluation.landcover` and
:mod:`~latentcube.evaluation.croptype`: samples are pixels (or pixel-dates)
with a class label and a spatial block id; the folds keep whole blocks
together, and blocks are larger than the 15 px model context, so a test pixel's
context never overlaps a training pixel's block interior (neighbouring pixels
cannot leak). Predictions of all folds are pooled before scoring.

Every feature set gets the same treatment: features are standardised (fitted on
the training folds), and the probe's one hyper-parameter (the inverse
regularisation ``C`` of the logistic regression, the number of neighbours of
k-NN) is chosen per outer fold by an inner blocked cross-validation on that
fold's training blocks only (macro-F1), from the same grid for every set. The
test folds are never used for any choice.

The logistic regression is fitted to convergence (gradient tolerance
:data:`LOGREG_TOL`): its objective has one optimum, so the fit, and with it
every score, no longer depends on the starting point (the grid walks with warm
starts), nor on the CPU's vector kernels, as scikit-learn's default tolerance of
1e-4 did (macro-F1 up to 0.005 apart between AVX2 and AVX-512 kernels on the
crop-type probe; identical with the tolerance here). Up to
:data:`NEWTON_MAX_FEATURES` features it uses the Newton-Cholesky solver, faster
there; beyond, L-BFGS (both reach the same optimum).

The fits run with one BLAS/OpenMP thread (``blocked_cv(threads=1)``): they are
small, and on the project's 2-core machine the process's default pools made them
12.2x slower in wall time (5.8x with the earlier tolerance;
``benchmarks/bench_probes.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import numpy as np

from latentcube.errors import EvaluationError
from latentcube.evaluation.cache import StepCache, cached

__all__ = [
    "LOGREG_TOL",
    "NEWTON_MAX_FEATURES",
    "PARAM_GRIDS",
    "PROBES",
    "block_ids",
    "blocked_cv",
    "filter_classes",
    "make_probe",
    "paired_differences",
    "score_pooled",
    "tuned_probe",
]

#: Probe classifiers: scaled logistic regression and scaled k-NN.
PROBES: tuple[str, ...] = ("logreg", "knn")

#: Hyper-parameter grid of each probe, searched by inner blocked CV (same for every set).
PARAM_GRIDS: dict[str, dict[str, list[Any]]] = {
    "logreg": {"C": [0.01, 0.1, 1.0, 10.0]},
    "knn": {"n_neighbors": [5, 10, 20, 40]},
}


def block_ids(iy: np.ndarray, ix: np.ndarray, block: int, *, offset: int = 0) -> np.ndarray:
    """Id of the ``block`` x ``block`` pixel square holding each (row, col); ``offset`` per cube."""
    if block < 1:
        raise EvaluationError(f"block size must be >= 1 px, got {block}")
    iy, ix = np.asarray(iy), np.asarray(ix)
    return offset + (iy // block) * 100_000 + ix // block


#: Gradient tolerance of the logistic regression: fitted to convergence, not to
#: scikit-learn's default 1e-4, whose stopping point moved with the CPU's kernels.
LOGREG_TOL = 1e-8

#: Up to this many features the logistic regression uses the Newton-Cholesky
#: solver (2.7x less CPU time than converged L-BFGS on data of the land-cover
#: probe's shape, 7 features); beyond, L-BFGS (3.0x less than Newton-Cholesky at
#: the crop-type series' 119 features; ``benchmarks/bench_logreg.py``).
NEWTON_MAX_FEATURES = 32


def make_probe(
    kind: str, seed: int = 0, n_neighbors: int = 10, n_features: int | None = None
) -> Any:
    """A scikit-learn pipeline: standard scaling + logistic regression or k-NN.

    Parameters
    ----------
    kind
        ``logreg`` or ``knn``.
    seed
        Seed of the classifier.
    n_neighbors
        k of the k-NN probe.
    n_features
        Number of features the logistic regression will see: it picks the
        solver (:data:`NEWTON_MAX_FEATURES`); ``None`` uses L-BFGS. Both fit to
        :data:`LOGREG_TOL`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        newton = n_features is not None and n_features <= NEWTON_MAX_FEATURES
        clf: Any = LogisticRegression(
            solver="newton-cholesky" if newton else "lbfgs",
            tol=LOGREG_TOL,
            max_iter=200 if newton else 20000,
            class_weight="balanced",
            random_state=seed,
        )
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=n_neighbors)
    else:
        raise EvaluationError(f"unknown probe {kind!r}; expected one of {PROBES}")
    return make_pipeline(StandardScaler(), clf)


def tuned_probe(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int = 0,
    inner_splits: int = 3,
    grid: Mapping[str, Sequence[Any]] | None = None,
    threads: int | None = 1,
) -> tuple[Any, dict[str, Any]]:
    """Fit a probe whose hyper-parameter is chosen by inner blocked CV on ``x`` only.

    Parameters
    ----------
    kind
        ``logreg`` or ``knn``.
    x, y, groups
        Training samples, labels and spatial block ids (of the outer training fold).
    seed
        Seed of the inner fold assignment and the classifier.
    inner_splits
        Inner folds (capped by the training blocks). Each inner fold standardises
        its own training part. An inner fold whose training part holds one class
        only (small areas: few blocks per class) cannot rank the values and is
        skipped; with fewer than two blocks, or no inner fold left, the grid's
        middle value is used untuned.
    grid
        Values of the probe's one parameter (default :data:`PARAM_GRIDS`): ``C``
        for ``logreg``, ``n_neighbors`` for ``knn``. The value with the best mean
        inner macro-F1 is refitted on all of ``x``.
    threads
        BLAS and OpenMP threads of the fits (see :func:`blocked_cv`); ``None``
        keeps the process's settings.

    Returns
    -------
    tuple
        The fitted pipeline and the chosen parameters.
    """
    values = {k: list(v) for k, v in (grid if grid is not None else PARAM_GRIDS[kind]).items()}
    if len(values) != 1:
        raise EvaluationError(f"a probe grid has one parameter, got {list(values)}")
    with _thread_limit(threads):
        return _tuned_probe(kind, x, y, groups, values, seed, inner_splits)


def _thread_limit(threads: int | None) -> AbstractContextManager[Any]:
    """BLAS and OpenMP pools limited to ``threads`` (``None``: left as they are)."""
    from threadpoolctl import threadpool_limits

    if threads is not None and threads < 1:
        raise EvaluationError(f"threads must be >= 1 or None, got {threads}")
    return threadpool_limits(limits=threads) if threads is not None else nullcontext()


def _tuned_probe(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    grid: dict[str, list[Any]],
    seed: int,
    inner_splits: int,
) -> tuple[Any, dict[str, Any]]:
    """:func:`tuned_probe` under its thread limit."""
    from sklearn.model_selection import GroupKFold

    ((param, values),) = grid.items()
    n_blocks = len(np.unique(groups))
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    if n_blocks >= 2:
        folds = [
            (tr, va)
            for tr, va in GroupKFold(
                n_splits=min(inner_splits, n_blocks), shuffle=True, random_state=seed
            ).split(x, y, groups)
            if len(np.unique(y[tr])) >= 2
        ]
    if not folds:
        best = values[len(values) // 2]
    else:
        scores = np.zeros(len(values))
        for tr, va in folds:
            scores += _inner_scores(kind, param, values, x[tr], y[tr], x[va], y[va], seed)
        best = values[int(np.argmax(scores))]  # ties: the first (strongest regularisation)
    model = make_probe(kind, seed, n_features=x.shape[1])
    model.set_params(**{f"{model.steps[-1][0]}__{param}": best})
    return model.fit(x, y), {param: best}


def _inner_scores(
    kind: str,
    param: str,
    values: Sequence[Any],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Macro-F1 on one inner validation fold for every grid value.

    Logistic regression walks the grid of ``C`` with warm starts (each fit
    converges to the optimum a cold fit reaches, :data:`LOGREG_TOL`); k-NN
    queries the largest k once and votes with the first k neighbours for every k
    (uniform weights, ties to the smallest label, as scikit-learn).
    """
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    labels = np.unique(np.concatenate([y_tr, y_va]))
    sc = StandardScaler().fit(x_tr)
    xt, xv = sc.transform(x_tr), sc.transform(x_va)
    out = np.zeros(len(values))
    if kind == "logreg":
        if param != "C":
            raise EvaluationError(f"logreg grid must be over C, got {param!r}")
        model = make_probe("logreg", seed, n_features=x_tr.shape[1]).steps[-1][1]
        model.set_params(warm_start=True)
        order = np.argsort(values)  # weak to strong fits: warm starts help
        for i in order:
            model.set_params(C=values[i])
            model.fit(xt, y_tr)
            pred = model.predict(xv)
            out[i] = f1_score(y_va, pred, labels=labels, average="macro", zero_division=0)
        return out
    if param != "n_neighbors":
        raise EvaluationError(f"knn grid must be over n_neighbors, got {param!r}")
    from sklearn.neighbors import NearestNeighbors

    kmax = min(max(values), len(y_tr))
    nn = NearestNeighbors(n_neighbors=kmax).fit(xt)
    idx = nn.kneighbors(xv, return_distance=False)
    classes, y_code = np.unique(y_tr, return_inverse=True)
    onehot = np.eye(len(classes))[y_code[idx]]  # (n_va, kmax, n_classes)
    votes = np.cumsum(onehot, axis=1)
    for i, k in enumerate(values):
        pred = classes[np.argmax(votes[:, min(k, kmax) - 1], axis=1)]
        out[i] = f1_score(y_va, pred, labels=labels, average="macro", zero_division=0)
    return out


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
    tune: bool = True,
    repeats: int = 1,
    threads: int | None = 1,
    progress: bool = False,
    cache: str | os.PathLike[str] | None = None,
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
    tune
        Choose each probe's hyper-parameter per outer fold by inner blocked CV on
        the training blocks (:func:`tuned_probe`); ``False`` uses the defaults
        (``C`` = 1, 10 neighbours).
    repeats
        Repeated CV: the whole cross-validation is run ``repeats`` times with the
        fold seeds ``seed``, ``seed + 1``, ... (other assignments of the blocks
        to folds, and other inner folds); repeat ``r`` equals a single run with
        seed ``seed + r``. Every feature set sees the same assignments, so the
        differences between two sets can be paired per repeat
        (:func:`paired_differences`).
    threads
        BLAS and OpenMP threads of the probe fits (default 1: the fits are small,
        and more threads mostly add synchronisation; ``benchmarks/bench_probes.py``
        measures it). ``None`` keeps the process's settings. The thread count
        changes only floating-point rounding; with scikit-learn's default
        tolerance that tipped the inner search's choice in a few folds
        (docs/evaluation.md: 3 of 350 on crop type), which the converged fit
        (:data:`LOGREG_TOL`) is meant to prevent.
    progress
        Show a progress bar (stderr) with one step per feature set, probe and
        repeat (each step fits all outer folds).
    cache
        A folder where the result of each step is stored as soon as it is
        computed; a rerun with the same inputs reads it instead of fitting again,
        so a killed run resumes where it stopped. Each entry is keyed by a hash of
        the features, labels, blocks, fold seed, probe, grid, settings and the
        scikit-learn version, so changed inputs are never served from it.

    Returns
    -------
    dict
        ``result[feature_set][probe]`` = ``{"macro_f1", "per_class_f1", "accuracy",
        "chosen"}`` (``chosen``: the hyper-parameters of each outer fold). With
        ``repeats > 1`` the scores are means over the repeats, ``chosen`` lists
        the folds of every repeat in turn, and ``macro_f1_repeats`` (one value per
        repeat), ``macro_f1_sd`` (their sample standard deviation) and
        ``fold_seeds`` are added.
    """
    from tqdm.auto import tqdm

    if repeats < 1:
        raise EvaluationError(f"repeats must be >= 1, got {repeats}")
    total = repeats * len(features) * len(probes)
    with (
        _thread_limit(threads),  # checks ``threads`` before any other work
        tqdm(total=total, desc="probes", unit="fit", disable=not progress) as bar,
    ):
        store = None
        if cache is not None:
            import sklearn

            context = (np.asarray(labels), np.asarray(groups), n_splits, tune, threads, PARAM_GRIDS)
            store = StepCache(cache, *context, sklearn.__version__)
        runs = [
            _blocked_cv_once(
                features,
                labels,
                groups,
                probes=probes,
                n_splits=n_splits,
                seed=seed + r,
                tune=tune,
                bar=bar,
                cache=store,
            )
            for r in range(repeats)
        ]
    if repeats == 1:
        return runs[0]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_probe in runs[0].items():
        out[name] = {}
        for kind, first in by_probe.items():
            rs = [run[name][kind] for run in runs]
            f1 = [r["macro_f1"] for r in rs]
            out[name][kind] = {
                "macro_f1": float(np.mean(f1)),
                "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                "per_class_f1": {
                    c: float(np.mean([r["per_class_f1"][c] for r in rs]))
                    for c in first["per_class_f1"]
                },
                "chosen": [c for r in rs for c in r["chosen"]],
                "macro_f1_repeats": f1,
                "macro_f1_sd": float(np.std(f1, ddof=1)),
                "fold_seeds": [seed + r for r in range(repeats)],
            }
    return out


def _blocked_cv_once(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    probes: Sequence[str],
    n_splits: int,
    seed: int,
    tune: bool,
    bar: Any = None,
    cache: StepCache | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """One blocked cross-validation with the fold seed ``seed`` (see :func:`blocked_cv`).

    ``bar`` (a tqdm bar) advances by one per feature set and probe; ``cache``
    serves and stores the result of each.
    """
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
    for i, (tr, _) in enumerate(folds):
        held = np.unique(labels[tr])
        if len(held) < 2:
            raise EvaluationError(
                f"fold {i + 1} of {len(folds)} (fold seed {seed}): its training blocks hold "
                f"only class {held.tolist()}, so no probe can be fitted; {len(classes)} "
                f"classes lie in {n_blocks} blocks. Use more area, smaller blocks or "
                "fewer folds"
            )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, x in features.items():
        x = np.asarray(x, np.float64)
        if x.shape[0] != len(labels) or not np.isfinite(x).all():
            raise EvaluationError(f"feature set {name!r}: wrong length or non-finite values")
        out[name] = {}
        for kind in probes:
            step = partial(_probe_step, kind, x, labels, groups, folds, classes, seed, tune)
            out[name][kind] = cached(cache, (x, kind, seed), step)
            if bar is not None:
                bar.set_postfix_str(f"{name} / {kind}, fold seed {seed}", refresh=False)
                bar.update(1)
    return out


def _probe_step(
    kind: str,
    x: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    classes: np.ndarray,
    seed: int,
    tune: bool,
) -> dict[str, Any]:
    """One probe on one feature set over all outer folds: its scores and choices."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.empty_like(labels)
    chosen = []
    for tr, te in folds:
        if tune:
            model, params = tuned_probe(  # blocked_cv has set the threads
                kind, x[tr], labels[tr], groups[tr], seed=seed, threads=None
            )
        else:
            model, params = make_probe(kind, seed, n_features=x.shape[1]).fit(x[tr], labels[tr]), {}
        chosen.append(params)
        pred[te] = model.predict(x[te])
    per = f1_score(labels, pred, labels=classes, average=None, zero_division=0)
    return {
        "macro_f1": float(np.mean(per)),
        "accuracy": float(accuracy_score(labels, pred)),
        "per_class_f1": {str(c): float(v) for c, v in zip(classes, per, strict=True)},
        "chosen": chosen,
    }


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
    tune: bool = True,
    repeats: int = 1,
    progress: bool = False,
    cache: str | os.PathLike[str] | None = None,
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
    probes, n_splits, seed, tune, repeats, progress, cache
        See :func:`blocked_cv`.
    min_samples
        Classes with fewer samples (or in fewer than 2 blocks) are dropped.

    Returns
    -------
    dict
        ``scores``, ``class_counts``, ``dropped_classes``, ``n_samples``, ``n_blocks``,
        ``block_px``, ``n_features``, ``tuned`` and ``repeats``.
    """
    y_all, g_all = np.concatenate(labels), np.concatenate(groups)
    if len(y_all) == 0:
        raise EvaluationError("no sample is valid in every feature set")
    keep, dropped = filter_classes(y_all, g_all, min_samples=min_samples)
    x_all = {k: np.concatenate(v)[keep] for k, v in features.items()}
    y_all, g_all = y_all[keep], g_all[keep]
    scores = blocked_cv(
        x_all,
        y_all,
        g_all,
        probes=probes,
        n_splits=n_splits,
        seed=seed,
        tune=tune,
        repeats=repeats,
        progress=progress,
        cache=cache,
    )
    kept = sorted(int(c) for c in np.unique(y_all))
    return {
        "scores": scores,
        "class_counts": {str(c): int((y_all == c).sum()) for c in kept},
        "dropped_classes": dropped,
        "n_samples": len(y_all),
        "n_blocks": len(np.unique(g_all)),
        "block_px": block,
        "n_features": {k: int(v.shape[1]) for k, v in x_all.items()},
        "tuned": tune,
        "repeats": repeats,
    }


def paired_differences(
    scores: Mapping[str, Mapping[str, Mapping[str, Any]]],
    reference: str,
    others: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Macro-F1 of ``reference`` minus that of each other set, paired per CV repeat.

    Parameters
    ----------
    scores
        :func:`blocked_cv` output; with ``repeats > 1`` the per-repeat scores
        (``macro_f1_repeats``) are paired, as every set saw the same folds.
    reference
        The feature set compared (e.g. an embedding).
    others
        Sets it is compared with (default: every other set).

    Returns
    -------
    dict
        ``result[other][probe]`` = ``{"mean", "sd", "min", "max", "wins",
        "repeats"}``: the mean, sample standard deviation (0 for one repeat),
        smallest and largest difference over the repeats, and in how many repeats
        ``reference`` scored higher.
    """
    if reference not in scores:
        raise EvaluationError(f"unknown reference feature set {reference!r}")
    others = [k for k in scores if k != reference] if others is None else list(others)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for other in others:
        if other not in scores:
            raise EvaluationError(f"unknown feature set {other!r}")
        out[other] = {}
        for kind, ref in scores[reference].items():
            if kind not in scores[other]:
                continue
            a = np.asarray(ref.get("macro_f1_repeats", [ref["macro_f1"]]), float)
            oth = scores[other][kind]
            b = np.asarray(oth.get("macro_f1_repeats", [oth["macro_f1"]]), float)
            if a.shape != b.shape:
                raise EvaluationError(
                    f"{reference!r} and {other!r} were scored with different repeats"
                )
            d = a - b
            out[other][kind] = {
                "mean": float(d.mean()),
                "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                "min": float(d.min()),
                "max": float(d.max()),
                "wins": int((d > 0).sum()),
                "repeats": len(d),
            }
    return out

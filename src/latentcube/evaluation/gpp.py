"""The GPP task (paper spec section 6.2): daily GPP at flux towers from 90-day feature windows.

Samples are windows of ``seq_len`` (90) consecutive days taken every
``stride`` (10) days; the target is GPP on the window's last day. Every feature
set of a comparison uses exactly the same windows: a window is kept only when
all columns of all feature sets and the target are finite.

Splits: by years (windows whose last day falls in a test year are test windows)
or leave-one-site-out. Models: a small temporal transformer regressor with an L1
loss (:class:`GPPTransformer`, architecture of the authors' code) tuned by a
seeded random search bounded by a time budget, and gradient boosting on the
window's values every 10 days; the climatology (mean seasonal cycle of the
training years) is the no-imagery reference. Metrics: R2, RMSE, NRMSE
(RMSE / mean observed GPP) and bias (mean predicted - observed), per site and
overall.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from latentcube.errors import EvaluationError
from latentcube.evaluation.cache import StepCache, cached, run_cache
from latentcube.models.blocks import transformer_stack

__all__ = [
    "SEARCH_SPACE",
    "GPPTransformer",
    "GPPWindows",
    "fit_gradient_boosting",
    "fit_transformer",
    "gpp_metrics",
    "leave_one_site_out",
    "make_windows",
    "random_search",
    "run_gpp",
    "site_table",
    "split_by_years",
]

#: Random-search space of the transformer (a CPU-sized version of the authors' grid).
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "d_model": (16, 32, 64),
    "n_heads": (2, 4),
    "n_layers": (1, 2, 3),
    "dropout": (0.05, 0.1),
    "lr": (3e-4, 1e-3, 3e-3),
    "batch_size": (8, 16, 32),
}


@dataclass
class GPPWindows:
    """Windows of one comparison: inputs per feature set, target, site and last day."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    site: np.ndarray
    end: np.ndarray
    columns: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


def make_windows(
    sites: Mapping[str, pd.DataFrame],
    feature_sets: Mapping[str, Sequence[str]],
    *,
    target: str = "GPP",
    seq_len: int = 90,
    stride: int = 10,
) -> GPPWindows:
    """Cut 90-day windows (stride 10) predicting the target on the last day.

    Parameters
    ----------
    sites
        Site -> daily DataFrame (consecutive days) with the feature columns and ``target``.
    feature_sets
        Set name -> its columns. A set may be empty (e.g. the climatology).
    target, seq_len, stride
        Target column, window length in days, step between window ends.

    Returns
    -------
    GPPWindows
        ``x[set]`` (n, seq_len, n_columns) float32.
    """
    if seq_len < 1 or stride < 1:
        raise EvaluationError("seq_len and stride must be >= 1")
    cols = sorted({c for cs in feature_sets.values() for c in cs})
    xs: dict[str, list[np.ndarray]] = {k: [] for k in feature_sets}
    ys, ss, es = [], [], []
    for site, df in sites.items():
        missing = [c for c in [*cols, target] if c not in df.columns]
        if missing:
            raise EvaluationError(f"site {site}: missing columns {missing}")
        idx = pd.DatetimeIndex(df.index)
        if len(idx) > 1 and not (np.diff(idx.values) == np.timedelta64(1, "D")).all():
            raise EvaluationError(f"site {site}: the daily table has gaps or is not sorted")
        a = df[cols].to_numpy(np.float64)
        ok_day = np.isfinite(a).all(axis=1) if cols else np.ones(len(df), bool)
        # windows: all days finite -> rolling count over seq_len
        csum = np.concatenate([[0], np.cumsum(ok_day)])
        y = df[target].to_numpy(np.float64)
        ends = np.arange(seq_len - 1, len(df), stride)
        good = [
            e for e in ends if csum[e + 1] - csum[e + 1 - seq_len] == seq_len and np.isfinite(y[e])
        ]
        for e in good:
            for k, cs in feature_sets.items():
                xs[k].append(df[list(cs)].to_numpy(np.float32)[e + 1 - seq_len : e + 1])
            ys.append(y[e])
            ss.append(site)
            es.append(idx[e].to_datetime64())
    if not ys:
        raise EvaluationError(
            f"no {seq_len}-day window with all features and the target finite; check that "
            "the features and the flux data overlap in time"
        )
    return GPPWindows(
        x={k: np.stack(v) for k, v in xs.items()},
        y=np.asarray(ys),
        site=np.asarray(ss),
        end=np.asarray(es, "datetime64[D]"),
        columns={k: list(v) for k, v in feature_sets.items()},
    )


def split_by_years(end: np.ndarray, test_years: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and test windows: test = last day in one of ``test_years``."""
    years = pd.DatetimeIndex(end).year.to_numpy()
    test = np.isin(years, list(test_years))
    if not test.any():
        raise EvaluationError(f"no window ends in the test years {list(test_years)}")
    if test.all():
        raise EvaluationError(f"every window ends in the test years {list(test_years)}")
    return np.flatnonzero(~test), np.flatnonzero(test)


def leave_one_site_out(site: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One fold per site: (held-out site, training indices, test indices)."""
    names = list(dict.fromkeys(site.tolist()))
    if len(names) < 2:
        raise EvaluationError("leave-one-site-out needs at least two sites")
    return [(s, np.flatnonzero(site != s), np.flatnonzero(site == s)) for s in names]


def gpp_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """R2, RMSE, NRMSE (RMSE / mean observed), bias (mean predicted - observed) and n."""
    o, p = np.asarray(observed, float), np.asarray(predicted, float)
    if o.shape != p.shape or o.size == 0:
        raise EvaluationError("observed and predicted must be non-empty and of equal length")
    err = p - o
    rmse = float(np.sqrt(np.mean(err**2)))
    ss_tot = float(np.sum((o - o.mean()) ** 2))
    return {
        "r2": float(1.0 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "rmse": rmse,
        "nrmse": rmse / float(o.mean()) if o.mean() != 0 else float("nan"),
        "bias": float(err.mean()),
        "n": int(o.size),
    }


class GPPTransformer(nn.Module):
    """Temporal transformer regressor (the authors' ``GPPTemporalTransformer``).

    ``Linear(features -> d)`` plus a learned temporal embedding scaled by
    ``1 / sqrt(d)``, a ReLU transformer encoder, the last token, then
    ``LayerNorm -> Linear(d -> d/2) -> GELU -> Dropout -> Linear(-> 1)``.
    """

    def __init__(
        self,
        n_features: int,
        seq_len: int = 90,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        ff_dim: int = 128,
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise EvaluationError(f"d_model {d_model} not divisible by n_heads {n_heads}")
        self.proj = nn.Linear(n_features, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) / math.sqrt(d_model))
        self.encoder = transformer_stack(
            d_model, n_heads, ff_dim, dropout, n_layers, activation="relu", norm_first=False
        )
        self.head = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, d_model // 2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model // 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, seq_len, features) -> (B,) standardised GPP."""
        h = self.encoder(self.proj(x) + self.pos[: x.shape[1]])
        return self.head(h[:, -1]).squeeze(-1)


@dataclass
class FittedTransformer:
    """A trained regressor with the standardisation of its training data."""

    model: GPPTransformer
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    params: dict[str, Any]
    val_mae: float
    epochs: int

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """GPP (gC m-2 d-1) of windows (n, seq_len, features)."""
        self.model.eval()
        z = torch.from_numpy(((x - self.x_mean) / self.x_std).astype(np.float32))
        return self.model(z).numpy().astype(np.float64) * self.y_std + self.y_mean


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = x.reshape(-1, x.shape[-1]).mean(0)
    s = x.reshape(-1, x.shape[-1]).std(0)
    return m, np.where(s > 1e-12, s, 1.0)


def fit_transformer(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: Mapping[str, Any] | None = None,
    *,
    max_epochs: int = 40,
    patience: int = 8,
    seed: int = 0,
) -> FittedTransformer:
    """Train :class:`GPPTransformer` with an L1 loss, AdamW and early stopping on validation MAE.

    Parameters
    ----------
    x_train, y_train, x_val, y_val
        Windows (n, seq_len, features) and targets (gC m-2 d-1).
    params
        Hyper-parameters (keys of :data:`SEARCH_SPACE`); defaults otherwise.
    max_epochs, patience
        Epoch limit and early-stopping patience.
    seed
        Seed of initialisation and batch order.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: more threads only add overhead
    try:
        return _fit(x_train, y_train, x_val, y_val, params, max_epochs, patience, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: Mapping[str, Any] | None,
    max_epochs: int,
    patience: int,
    seed: int,
) -> FittedTransformer:
    p = {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "dropout": 0.05,
        "lr": 1e-3,
        "batch_size": 16,
        **dict(params or {}),
    }
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xm, xs = _standardise(x_train)
    ym, ys = float(y_train.mean()), float(y_train.std()) or 1.0
    xt = torch.from_numpy(((x_train - xm) / xs).astype(np.float32))
    yt = torch.from_numpy(((y_train - ym) / ys).astype(np.float32))
    xv = torch.from_numpy(((x_val - xm) / xs).astype(np.float32))
    model = GPPTransformer(
        x_train.shape[-1],
        x_train.shape[1],
        p["d_model"],
        p["n_heads"],
        p["n_layers"],
        4 * p["d_model"],
        p["dropout"],
    )
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=1e-6)
    loss_fn = nn.L1Loss()
    best, best_state, bad, epoch = math.inf, None, 0, 0
    for epoch in range(1, max_epochs + 1):  # noqa: B007
        model.train()
        order = rng.permutation(len(xt))
        for i in range(0, len(order), p["batch_size"]):
            b = order[i : i + p["batch_size"]]
            opt.zero_grad()
            loss = loss_fn(model(xt[b]), yt[b])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(np.mean(np.abs(model(xv).numpy() * ys + ym - y_val)))
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FittedTransformer(model, xm, xs, ym, ys, p, best, epoch)


def random_search(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    n_trials: int = 8,
    time_budget: float | None = 120.0,
    space: Mapping[str, Sequence[Any]] = SEARCH_SPACE,
    seed: int = 0,
    max_epochs: int = 40,
) -> tuple[FittedTransformer, list[dict[str, Any]]]:
    """Seeded random search over the transformer's hyper-parameters, bounded by a time budget.

    Trials are drawn in a fixed order from ``seed``; the search stops after
    ``n_trials`` or once ``time_budget`` seconds have passed (at least one
    trial always runs). The model with the lowest validation MAE is returned.

    Returns
    -------
    tuple
        The best fitted model and one record per trial (params, val MAE, epochs, seconds).
    """
    rng = np.random.default_rng(seed)
    combos: list[dict[str, Any]] = []
    while len(combos) < n_trials:
        c = {k: v[int(rng.integers(len(v)))] for k, v in space.items()}
        if c.get("d_model", 32) % c.get("n_heads", 4) == 0:
            combos.append({k: (v.item() if hasattr(v, "item") else v) for k, v in c.items()})
    t0 = time.perf_counter()
    best, trials = _search(
        combos, x_train, y_train, x_val, y_val, t0, time_budget, seed, max_epochs
    )
    assert best is not None
    return best, trials


def _search(
    combos: list[dict[str, Any]],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    t0: float,
    time_budget: float | None,
    seed: int,
    max_epochs: int,
) -> tuple[FittedTransformer | None, list[dict[str, Any]]]:
    best: FittedTransformer | None = None
    trials: list[dict[str, Any]] = []
    for i, c in enumerate(combos):
        if i > 0 and time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
        t1 = time.perf_counter()
        fit = fit_transformer(
            x_train, y_train, x_val, y_val, c, seed=seed + i, max_epochs=max_epochs
        )
        trials.append(
            {
                "params": c,
                "val_mae": fit.val_mae,
                "epochs": fit.epochs,
                "seconds": time.perf_counter() - t1,
            }
        )
        if best is None or fit.val_mae < best.val_mae:
            best = fit
    return best, trials


def _summary(x: np.ndarray, every: int = 10) -> np.ndarray:
    """The window's values on its last day and every ``every`` days before, flattened."""
    return x[:, ::-1][:, ::every].reshape(len(x), -1)


def fit_gradient_boosting(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0) -> Any:
    """Histogram gradient boosting on :func:`_summary` of the windows (absolute-error loss)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=300, learning_rate=0.05, random_state=seed
    ).fit(_summary(x_train), y_train)


def _validation_split(
    end: np.ndarray, idx: np.ndarray, seed: int = 0, fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random ``fraction`` of the training windows for early stopping and selection."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(idx)
    k = max(1, round(len(perm) * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _fit_predict(
    w: GPPWindows,
    name: str,
    model: str,
    tr: np.ndarray,
    te: np.ndarray,
    *,
    seed: int,
    n_trials: int,
    time_budget: float | None,
    max_epochs: int,
    space: Mapping[str, Sequence[Any]],
) -> tuple[np.ndarray, dict[str, Any]]:
    x = w.x[name]
    if model == "gbr":
        from threadpoolctl import threadpool_limits

        # tiny data: OpenMP threads only add overhead (and stall on a busy machine)
        with threadpool_limits(limits=1):
            m = fit_gradient_boosting(x[tr], w.y[tr], seed)
            return m.predict(_summary(x[te])), {}
    fit_i, val_i = _validation_split(w.end, tr, seed)
    best, trials = random_search(
        x[fit_i],
        w.y[fit_i],
        x[val_i],
        w.y[val_i],
        n_trials=n_trials,
        time_budget=time_budget,
        seed=seed,
        max_epochs=max_epochs,
        space=space,
    )
    return best.predict(x[te]), {"best_params": best.params, "trials": trials}


def _gpp_step(
    w: GPPWindows, name: str, model: str, tr: np.ndarray, te: np.ndarray, **kw: Any
) -> dict[str, Any]:
    """:func:`_fit_predict` as a JSON-able step result (test predictions and search record)."""
    pred, info = _fit_predict(w, name, model, tr, te, **kw)
    return {"pred": pred.tolist(), "info": info}


def _score(w: GPPWindows, te: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    per_site = {
        s: gpp_metrics(w.y[te][w.site[te] == s], pred[w.site[te] == s])
        for s in dict.fromkeys(w.site[te].tolist())
    }
    return {"overall": gpp_metrics(w.y[te], pred), "per_site": per_site}


def run_gpp(
    sites: Mapping[str, pd.DataFrame],
    feature_sets: Mapping[str, Sequence[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    test_years: Sequence[int] | None = None,
    models: Sequence[str] = ("transformer", "gbr"),
    n_trials: int = 4,
    time_budget: float | None = 60.0,
    max_epochs: int = 40,
    space: Mapping[str, Sequence[Any]] = SEARCH_SPACE,
    seq_len: int = 90,
    stride: int = 10,
    seed: int = 0,
    reference: Mapping[str, Any] | None = None,
    title: str = "GPP evaluation",
    notes: str = "",
    command: str | None = None,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """The GPP comparison: every feature set x model on the same windows and split.

    Parameters
    ----------
    sites
        Site -> daily table with ``GPP`` and every feature column.
    feature_sets
        Set name -> columns. ``climatology`` (no columns) is always added.
    out_dir
        Report folder; ``None`` writes nothing.
    test_years
        Year split (test = windows ending in these years); ``None`` with several
        sites = leave-one-site-out.
    models
        ``transformer`` (random search) and/or ``gbr`` (gradient boosting).
    n_trials, time_budget, max_epochs, space
        Random-search bounds (per feature set and fold) and search space.
    seq_len, stride
        Window length and step (90 and 10 in the paper).
    seed
        Seed of everything.
    reference
        Published scores shown beside ours (e.g. CarbonFluxBench rows of the sites).
    title, notes, command
        Report text.
    progress
        Show a progress bar (stderr) with one step per feature set, model and fold.
    resume
        Keep each step's predictions in ``<out_dir>/.gpp-cache`` as they are
        computed (:class:`~latentcube.evaluation.cache.StepCache`), so that the
        same call after a kill fits only what is missing; the folder is removed
        once the report is written. Needs ``out_dir``.

    Returns
    -------
    dict
        ``scores[set][model]`` = ``{"overall": metrics, "per_site": {...}}``,
        the split, window counts and search records.
    """
    from tqdm.auto import tqdm

    from latentcube.evaluation.baselines import climatology

    unknown = set(models) - {"transformer", "gbr"}
    if unknown:
        raise EvaluationError(f"unknown model(s) {sorted(unknown)}; use 'transformer' or 'gbr'")
    sets = {k: list(v) for k, v in feature_sets.items() if k != "climatology"}
    w = make_windows(sites, sets, seq_len=seq_len, stride=stride)
    if test_years is not None:
        tr, te = split_by_years(w.end, test_years)
        folds = [(f"test years {list(test_years)}", tr, te)]
        split = {"type": "years", "test_years": list(test_years)}
    else:
        folds = leave_one_site_out(w.site)
        split = {"type": "leave-one-site-out"}
    for fold, tr, _te in folds:
        if len(tr) < 5:
            raise EvaluationError(
                f"{fold}: only {len(tr)} training windows (need 5); the features and the flux "
                "record overlap too little outside the test period"
            )
    scores: dict[str, dict[str, Any]] = {}
    preds: dict[str, np.ndarray] = {}
    search: dict[str, Any] = {}
    all_te = np.concatenate([f[2] for f in folds])
    # climatology: mean seasonal cycle of the training sites' training days
    clim = np.full(len(w), np.nan)
    for _fold, _tr, te in folds:
        train_days = []
        for s, df in sites.items():
            g = df["GPP"]
            mask = np.ones(len(g), bool)
            if test_years is not None:
                mask &= ~np.isin(pd.DatetimeIndex(g.index).year, list(test_years))
            if s in set(w.site[te].tolist()) and test_years is None:
                mask[:] = False
            train_days.append(g[mask])
        clim[te] = climatology(pd.concat(train_days), pd.DatetimeIndex(w.end[te]))
    scores["climatology"] = {"mean seasonal cycle": _score(w, all_te, clim[all_te])}
    preds["climatology"] = clim[all_te]
    fit_kw = {
        "seed": seed,
        "n_trials": n_trials,
        "time_budget": time_budget,
        "max_epochs": max_epochs,
        "space": space,
    }
    total = len(sets) * len(models) * len(folds)
    with (
        run_cache(out_dir, ".gpp-cache", resume) as folder,
        tqdm(total=total, desc="GPP fits", disable=not progress) as bar,
    ):
        cache = None
        if folder is not None:
            import sklearn

            settings = [seed, n_trials, time_budget, max_epochs, space, seq_len, stride]
            versions = [sklearn.__version__, torch.__version__]
            cache = StepCache(folder, w.y, w.end, settings, versions)
        for name in sets:
            scores[name] = {}
            for model in models:
                pred = np.full(len(w), np.nan)
                info: dict[str, Any] = {}
                for fold, tr, te in folds:
                    bar.set_postfix_str(f"{name} / {model}, {fold}")
                    step = cached(
                        cache,
                        (w.x[name], model, tr, te),
                        partial(_gpp_step, w, name, model, tr, te, **fit_kw),
                    )
                    pred[te], info[fold] = step["pred"], step["info"]
                    bar.update(1)
                scores[name][model] = _score(w, all_te, pred[all_te])
                preds[f"{name} / {model}"] = pred[all_te]
                if model == "transformer":
                    search[name] = info
        result: dict[str, Any] = {
            "task": "gpp",
            "split": split,
            "seq_len": seq_len,
            "stride": stride,
            "n_windows": {
                "total": len(w),
                "test": len(all_te),
                "train": int(len(w) - len(all_te)) if test_years is not None else None,
            },
            "sites": sorted(sites),
            "feature_sets": {k: v for k, v in sets.items()},
            "scores": scores,
            "search": search,
            "reference": dict(reference or {}),
            "test_predictions": {
                "site": w.site[all_te].tolist(),
                "date": [str(d) for d in w.end[all_te]],
                "observed": w.y[all_te].tolist(),
                **{k: v.tolist() for k, v in preds.items()},
            },
        }
        if out_dir is not None:
            _gpp_report(result, w, all_te, preds, Path(out_dir), title, notes, command, seed)
    return result


def gpp_table(result: Mapping[str, Any]) -> str:
    """Markdown table: one row per feature set and model, overall test metrics."""
    lines = ["| features | model | R2 | RMSE | NRMSE | bias | n |", "|---|---|---|---|---|---|---|"]
    for name, by_model in result["scores"].items():
        for model, s in by_model.items():
            m = s["overall"]
            lines.append(
                f"| {name} | {model} | {m['r2']:.3f} | {m['rmse']:.3f} | {m['nrmse']:.3f} | "
                f"{m['bias']:+.3f} | {m['n']} |"
            )
    return "\n".join(lines)


def _gpp_report(
    result: dict[str, Any],
    w: GPPWindows,
    te: np.ndarray,
    preds: Mapping[str, np.ndarray],
    out: Path,
    title: str,
    notes: str,
    command: str | None,
    seed: int,
) -> None:
    from latentcube.evaluation.report import plot_gpp_scatter, plot_gpp_series, write_report

    figs = []
    for s in dict.fromkeys(w.site[te].tolist()):
        m = w.site[te] == s
        sub = {k: v[m] for k, v in preds.items()}
        figs.append(
            plot_gpp_series(
                w.end[te][m],
                w.y[te][m],
                sub,
                out / "figures" / f"gpp_series_{s}.png",
                f"{s}: test windows",
            )
        )
    figs.append(
        plot_gpp_scatter(
            w.y[te],
            preds,
            out / "figures" / "gpp_scatter.png",
            "Predicted vs observed daily GPP (test)",
        )
    )
    body = (
        f"Split: {result['split']}; windows of {result['seq_len']} days every "
        f"{result['stride']} days, target = GPP on the last day; {result['n_windows']} windows. "
        "R2, RMSE and bias in gC m-2 d-1; NRMSE = RMSE / mean observed GPP.\n\n" + gpp_table(result)
    )
    sections = [("Results", body)]
    if result["reference"]:
        ref = result["reference"]
        lines = ["| published model (file) | site | R2 | RMSE |", "|---|---|---|---|"]
        for site, rows in ref.get("sites", {}).items():
            for r in rows:
                lines.append(f"| {r['file']} | {site} | {r['R2']:.3f} | {r['RMSE']:.3f} |")
        sections.append(
            (
                "Published reference (CarbonFluxBench, MODIS + ERA5-Land, zero-shot on held-out "
                "sites; not the same split or years)",
                "\n".join(lines),
            )
        )
    if notes:
        sections.append(("Notes", notes))
    write_report(out, title, {"gpp": result}, sections, figures=figs, command=command, seed=seed)


def site_table(flux: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Daily GPP and features of one site on the flux record's consecutive days.

    Parameters
    ----------
    flux
        Daily flux table with ``GPP`` (:mod:`latentcube.evaluation.flux`).
    features
        Daily features (:func:`latentcube.evaluation.features.site_features`).
    """
    if "GPP" not in flux:
        raise EvaluationError("flux table has no 'GPP' column")
    days = pd.date_range(flux.index.min(), flux.index.max(), freq="D", name="date")
    out = features.reindex(days)
    out["GPP"] = flux["GPP"].reindex(days)
    return out

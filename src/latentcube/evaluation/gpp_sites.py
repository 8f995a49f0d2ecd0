"""GPP at many flux sites at once: a manifest of cubes, a folder of flux files, one report.

The inputs are what ``latentcube cube --sites/--flux-sites`` leaves (``manifest.csv``:
one row per site with its status and store) and a folder holding each site's flux record.
Every usable site gets the feature sets of the single-site evaluation (the embedding
made with a model, the S2 bands, the indices, PCA-7 and potential radiation; see
:func:`~latentcube.evaluation.runs.evaluate_gpp`), and
:func:`~latentcube.evaluation.gpp.run_gpp` runs on all sites together, once per split:

``years``
    one regressor per feature set trained on the training years of every site and
    tested on the test years of every site; each site's test windows are also scored
    on their own.
``loso``
    leave-one-site-out: one fold per site, trained on the other sites only.

Scores (R2, RMSE, NRMSE, bias) are given per site, pooled over all test windows, and
pooled over the sites of each IGBP vegetation class (from the site registry). Where a
site also appears in published CarbonFluxBench results, the median of its per-site
scores stands beside ours.

Skipped, with a warning (:class:`SiteSkipped`) and a line in the report: a site whose
cube failed in the manifest. Refused with a one-line error before any work: a missing
or malformed manifest, a site whose cube store or flux file is missing, a site without
an IGBP class.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcube.errors import EvaluationError, LatentcubeError

__all__ = [
    "SPLITS",
    "SiteInput",
    "SiteSkipped",
    "benchmark_scores",
    "evaluate_gpp_sites",
    "find_flux",
    "read_site_inputs",
    "site_igbp",
    "split_tables",
]

PathLike = str | os.PathLike[str]

#: The splits of a multi-site evaluation, in the order they run.
SPLITS = ("years", "loso")
#: CarbonFluxBench's daily GPP target (night-time partitioning, 50th u* percentile).
BENCHMARK_TARGET = "GPP_NT_VUT_USTAR50"


class SiteSkipped(UserWarning):
    """A site of the manifest left out of the evaluation (its reason is in the report)."""


@dataclass(frozen=True)
class SiteInput:
    """One site to evaluate: its id, IGBP class, latitude, cube store and flux record."""

    site: str
    igbp: str
    lat: float
    cube: Path
    flux: Path


# ------------------------------------------------------------------------------ inputs


def find_flux(flux_dir: PathLike, site: str) -> Path:
    """The flux record of ``site`` in ``flux_dir``.

    Looked for, in order: a folder ``<site>/`` (ICOS half-hourly files of the
    site), one FLUXNET file ``FLX_<site>_*FULLSET_DD*.csv``, or ICOS half-hourly
    files ``<site>_*.csv`` (a glob of them is returned: every year of the site).

    Raises
    ------
    EvaluationError
        No record, or two FULLSET_DD files for the site.
    """
    root = Path(flux_dir)
    if (root / site).is_dir():
        return root / site
    fullset = sorted(root.glob(f"FLX_{site}_*FULLSET_DD*.csv"))
    if len(fullset) > 1:
        names = ", ".join(p.name for p in fullset)
        raise EvaluationError(f"{root}: several FULLSET_DD files for {site} ({names}); keep one")
    if fullset:
        return fullset[0]
    if sorted(root.glob(f"{site}_*.csv")):
        return root / f"{site}_*.csv"
    raise EvaluationError(
        f"{root}: no flux record for site {site} (looked for a folder {site}/, "
        f"FLX_{site}_*FULLSET_DD*.csv and {site}_*.csv)"
    )


def _read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV file as strings (empty cells stay ""), or a one-line error naming it."""
    if not path.is_file():
        raise EvaluationError(f"{path}: no such {what}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        msg = f"{path}: not a readable {what} ({err})".replace("\n", " ")
        raise EvaluationError(msg) from None


def site_igbp(sites: PathLike | None = None) -> dict[str, tuple[str, float]]:
    """Site id -> (IGBP class, latitude) of the registry, updated from a sites table.

    Parameters
    ----------
    sites
        A CSV with the columns ``id`` and ``igbp`` (``lat`` optional), e.g. the
        sites table given to ``build_cubes``; its rows add to or replace the
        shipped registry of 47 flux sites (:func:`~latentcube.cube.sites.flux_sites`).
    """
    from latentcube.cube.sites import flux_sites

    reg = {str(r.id): (str(r.igbp), float(r.lat)) for r in flux_sites().itertuples(index=False)}
    if sites is None:
        return reg
    path = Path(sites)
    df = _read_table(path, "sites file")
    if not {"id", "igbp"} <= set(df.columns):
        raise EvaluationError(f"{path}: needs the columns id and igbp (has {list(df.columns)})")
    for r in df.to_dict("records"):
        sid, igbp = str(r["id"]).strip(), str(r["igbp"]).strip()
        if not sid or not igbp:
            continue
        lat = _float(r.get("lat", ""))
        reg[sid] = (igbp, lat if lat is not None else reg.get(sid, ("", float("nan")))[1])
    return reg


def _float(value: Any) -> float | None:
    try:
        v = float(str(value).strip())
    except ValueError:
        return None
    return v if np.isfinite(v) else None


def read_site_inputs(
    manifest: PathLike, flux_dir: PathLike, *, sites: PathLike | None = None
) -> tuple[list[SiteInput], list[dict[str, str]]]:
    """The sites of a cube manifest with their flux records and IGBP classes.

    Parameters
    ----------
    manifest
        ``manifest.csv`` of :func:`~latentcube.cube.sites.build_cubes` (or its
        folder); store paths are relative to it.
    flux_dir
        Folder of flux records (:func:`find_flux`).
    sites
        Optional sites table with ``id`` and ``igbp`` (:func:`site_igbp`).

    Returns
    -------
    tuple
        The usable sites in manifest order, and ``{"site", "reason"}`` of each
        skipped one (a cube that failed to build), also issued as a
        :class:`SiteSkipped` warning.

    Raises
    ------
    EvaluationError
        One line naming the manifest and row (the header being line 1): a missing
        file or column, a duplicate id, a store marked ``ok`` that is not there, a
        site without a flux record or without an IGBP class.
    """
    path = Path(manifest)
    if path.is_dir():
        path = path / "manifest.csv"
    df = _read_table(path, "manifest")
    missing = [c for c in ("id", "status", "path") if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)}; not a manifest")
    if df.empty:
        raise EvaluationError(f"{path}: no sites")
    if not Path(flux_dir).is_dir():
        raise EvaluationError(f"{flux_dir}: no such flux folder")
    registry = site_igbp(sites)
    usable: list[SiteInput] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, r in enumerate(df.to_dict("records")):
        where = f"{path}: row {i + 2}"
        sid = str(r["id"]).strip()
        if not sid:
            raise EvaluationError(f"{where}: empty id")
        if sid in seen:
            raise EvaluationError(f"{where}: duplicate site {sid}")
        seen.add(sid)
        if str(r["status"]).strip() != "ok":
            why = str(r.get("error", "")).strip() or f"status {r['status']!r}"
            skipped.append({"site": sid, "reason": f"cube failed: {why}"})
            warnings.warn(f"{sid}: skipped, its cube failed ({why})", SiteSkipped, stacklevel=2)
            continue
        store = path.parent / str(r["path"]).strip()
        if not str(r["path"]).strip() or not store.exists():
            raise EvaluationError(f"{where} ({sid}): cube store {store} not found")
        try:
            flux = find_flux(flux_dir, sid)
        except EvaluationError as err:
            raise EvaluationError(f"{where} ({sid}): {err}") from None
        if sid not in registry or not registry[sid][0]:
            raise EvaluationError(
                f"{where}: site {sid} has no IGBP class in the site registry; give a sites "
                "table with id and igbp (--sites)"
            )
        igbp, reg_lat = registry[sid]
        lat = _float(r.get("lat", ""))
        lat = lat if lat is not None else reg_lat
        if not np.isfinite(lat):
            raise EvaluationError(f"{where} ({sid}): no latitude in the manifest or registry")
        usable.append(SiteInput(sid, igbp, float(lat), store, flux))
    return usable, skipped


def benchmark_scores(path: PathLike, target: str = BENCHMARK_TARGET) -> pd.DataFrame:
    """Published per-site scores: median R2 and RMSE per site over the result files.

    Parameters
    ----------
    path
        The CarbonFluxBench ``eval_results`` folder (``<model>_<split>_<set>.csv``
        files), or one CSV with the columns ``site``, ``R2``, ``RMSE`` (daily
        GPP, gC m-2 d-1) and optionally ``target`` (rows of other targets are
        dropped) and ``model``.
    target
        The GPP target kept.

    Returns
    -------
    pandas.DataFrame
        Index ``site``; ``ref_r2_median``, ``ref_rmse_median``, ``ref_r2_best``
        and ``ref_n`` (result rows of the site).
    """
    from latentcube.evaluation.flux import read_carbonfluxbench

    p = Path(path)
    if p.is_dir():
        r = read_carbonfluxbench(p, target)
    elif p.is_file():
        r = pd.read_csv(p)
        if not {"site", "R2", "RMSE"} <= set(r.columns):
            raise EvaluationError(f"{p}: needs the columns site, R2, RMSE (has {list(r.columns)})")
        if "target" in r.columns:
            r = r[r["target"] == target]
    else:
        raise EvaluationError(f"{p}: no such benchmark folder or file")
    g = r.groupby("site")
    return pd.DataFrame(
        {
            "ref_r2_median": g["R2"].median(),
            "ref_rmse_median": g["RMSE"].median(),
            "ref_r2_best": g["R2"].max(),
            "ref_n": g.size(),
        }
    )


# ---------------------------------------------------------------------------- features


def _site_features(
    site: SiteInput,
    *,
    model: PathLike | None,
    name: str,
    cache: Path | None,
    gap_fill: str,
    footprint: int | None,
    seed: int,
    device: str = "cpu",
    embedding: PathLike | None = None,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The daily table (GPP and every feature) of one site, and its feature sets."""
    from latentcube.cube.readers import open_cube
    from latentcube.evaluation.baselines import feature_sets
    from latentcube.evaluation.features import feature_columns, site_features
    from latentcube.evaluation.flux import read_flux
    from latentcube.evaluation.gpp import site_table
    from latentcube.evaluation.runs import embedding_features

    flux = read_flux(site.flux)
    cube = open_cube(site.cube).load()
    stores = [embedding] if embedding is not None else None
    emb = embedding_features([cube], model, stores, name, cache, device)
    cubes = feature_sets([cube], emb, seed=seed)[0]
    feats = site_features(
        dict(cubes),
        lat=site.lat,
        start=flux.index.min(),
        end=flux.index.max(),
        method=gap_fill,  # type: ignore[arg-type]
        footprint=footprint,
    )
    return site_table(flux, feats), feature_columns(feats, cubes)


def _common_sets(
    per_site: Mapping[str, Mapping[str, list[str]]],
) -> tuple[dict[str, list[str]], list[str]]:
    """Feature sets with the same columns at every site, and the names of the others."""
    first = next(iter(per_site.values()))
    keep = {k: v for k, v in first.items() if all(s.get(k) == v for s in per_site.values())}
    dropped = sorted({k for s in per_site.values() for k in s} - set(keep))
    return keep, dropped


def _default_test_years(
    tables: Mapping[str, pd.DataFrame], sets: Mapping[str, Sequence[str]]
) -> list[int]:
    """The last year with a day holding GPP and every feature of ``sets``, over all sites."""
    cols = ["GPP", *sorted({c for cs in sets.values() for c in cs})]
    last = [t.index[t[cols].notna().all(axis=1)].max() for t in tables.values()]
    last = [d for d in last if not pd.isna(d)]
    if not last:
        raise EvaluationError(
            "no site has a day with GPP and every feature; check that the cubes and the "
            "flux records overlap in time"
        )
    return [int(max(last).year)]


# ------------------------------------------------------------------------------ tables


def _metrics(obs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from latentcube.evaluation.gpp import gpp_metrics

    return gpp_metrics(obs, pred)


def split_tables(
    results: Mapping[str, Mapping[str, Any]],
    igbp: Mapping[str, str],
    reference: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Tables of a multi-site evaluation from the results of :func:`run_gpp` per split.

    Parameters
    ----------
    results
        Split name -> the result of :func:`~latentcube.evaluation.gpp.run_gpp`.
    igbp
        Site -> IGBP class.
    reference
        Published per-site scores (:func:`benchmark_scores`), joined to the site rows.

    Returns
    -------
    dict
        ``predictions`` (one row per split, test window, feature set and model),
        ``sites`` (per split, site, set and model: R2, RMSE, NRMSE, bias, n),
        ``pooled`` (per split, set and model over all test windows) and ``igbp``
        (per split, IGBP class, set and model over the windows of its sites).
    """
    rows = []
    for split, res in results.items():
        tp = res["test_predictions"]
        base = pd.DataFrame(
            {"split": split, "site": tp["site"], "date": tp["date"], "observed": tp["observed"]}
        )
        base["igbp"] = base["site"].map(igbp)
        for feats, by_model in res["scores"].items():
            for model in by_model:
                key = "climatology" if feats == "climatology" else f"{feats} / {model}"
                rows.append(base.assign(features=feats, model=model, predicted=tp[key]))
    pred = pd.concat(rows, ignore_index=True)
    cols = ["split", "site", "igbp", "date", "features", "model", "observed", "predicted"]
    pred = pred[cols]
    group = ["split", "features", "model"]

    def scored(by: list[str]) -> pd.DataFrame:
        out = []
        for key, g in pred.groupby(by, sort=False):
            m = _metrics(g["observed"].to_numpy(float), g["predicted"].to_numpy(float))
            out.append({**dict(zip(by, key, strict=True)), **m, "n_sites": g["site"].nunique()})
        return pd.DataFrame(out)

    sites = scored(["split", "site", "igbp", *group[1:]]).drop(columns="n_sites")
    if reference is not None and len(reference):
        sites = sites.join(reference, on="site")
        sites["ref_n"] = sites["ref_n"].astype("Int64")
    return {
        "predictions": pred,
        "sites": sites,
        "pooled": scored(group),
        "igbp": scored(["split", "igbp", *group[1:]]),
    }


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return format(v, spec) if isinstance(v, float) else str(v)


def _markdown(df: pd.DataFrame, columns: Sequence[str]) -> str:
    cols = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        cells = [_fmt(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- run


def evaluate_gpp_sites(
    manifest: PathLike,
    flux_dir: PathLike,
    out: PathLike,
    *,
    split: str = "both",
    model: PathLike | None = None,
    name: str = "embedding",
    sites: PathLike | None = None,
    test_years: Sequence[int] = (),
    gap_fill: str = "linear",
    footprint: int | None = None,
    carbonfluxbench: PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
    embeddings: Mapping[str, PathLike] | None = None,
    progress: bool = True,
    command: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """GPP at every site of a cube manifest (``latentcube evaluate gpp --manifest``).

    Parameters
    ----------
    manifest, flux_dir, sites
        The cubes, the flux records and optional IGBP classes
        (:func:`read_site_inputs`).
    out
        Report folder: ``report.md``, ``results.json``, ``sites.csv``,
        ``pooled.csv``, ``igbp.csv``, ``predictions.csv``, ``skipped.csv`` and
        each split's own report (``years/``, ``loso/``).
    split
        ``years``, ``loso`` or ``both``.
    model, name
        A bundle to embed every cube with, and the name of its feature set;
        without one only the baselines are evaluated.
    device
        Where ``model`` embeds the cubes (``auto``, ``cpu``, ``cuda``, ...).
    embeddings
        Site -> an embedding store of its cube, already made (instead of
        ``model``; the feature set is called ``name``).
    test_years
        Test years of the ``years`` split (default: the last year with a day
        holding GPP and every feature).
    gap_fill, footprint
        As in :func:`~latentcube.evaluation.features.site_features`.
    carbonfluxbench
        Published per-site scores shown beside ours (:func:`benchmark_scores`).
    seed, progress, command
        Seed of everything, progress bars, the command line of the report.
    **kwargs
        ``models``, ``n_trials``, ``time_budget``, ``max_epochs``, ``seq_len``,
        ``stride`` of :func:`~latentcube.evaluation.gpp.run_gpp`.

    Returns
    -------
    dict
        ``sites``, ``skipped``, ``splits`` (the result of each split), ``tables``
        (the DataFrames of :func:`split_tables`) and ``reference``.

    Notes
    -----
    A killed run resumes: each split's steps are kept in ``<out>/<split>/.gpp-cache``,
    each finished split and the embeddings in ``<out>/.gpp-sites-cache`` and
    ``<out>/.embed-cache``, until the report is written.
    """
    import sklearn
    import torch

    from latentcube.evaluation.cache import StepCache, cached, run_cache
    from latentcube.io import check_output

    if split not in (*SPLITS, "both"):
        raise EvaluationError(f"split must be 'years', 'loso' or 'both', got {split!r}")
    splits = list(SPLITS) if split == "both" else [split]
    if model is not None and embeddings:
        raise EvaluationError("give either a model or embedding stores, not both")
    check_output(
        out, [manifest, flux_dir, model, sites, carbonfluxbench, *(embeddings or {}).values()]
    )
    if model is not None:
        from latentcube.devices import resolve_device

        resolve_device(device)  # a device this machine lacks is refused before any work
    inputs, skipped = read_site_inputs(manifest, flux_dir, sites=sites)
    if not inputs:
        raise EvaluationError(f"{manifest}: no site with a built cube")
    if "loso" in splits and len(inputs) < 2:
        raise EvaluationError(
            f"leave-one-site-out needs at least two sites; {manifest} has {len(inputs)} usable"
        )
    reference = benchmark_scores(carbonfluxbench) if carbonfluxbench is not None else None
    out_dir = Path(out)
    results: dict[str, Any] = {}
    with (
        run_cache(out_dir, ".embed-cache", model is not None) as embed_cache,
        run_cache(out_dir, ".gpp-sites-cache", True) as folder,
    ):
        tables: dict[str, pd.DataFrame] = {}
        per_site_sets: dict[str, dict[str, list[str]]] = {}
        for s in inputs:
            try:
                tables[s.site], per_site_sets[s.site] = _site_features(
                    s,
                    model=model,
                    embedding=(embeddings or {}).get(s.site),
                    name=name,
                    cache=embed_cache,
                    gap_fill=gap_fill,
                    footprint=footprint,
                    seed=seed,
                    device=device,
                )
            except LatentcubeError as err:  # name the site: the message may only name a file
                raise EvaluationError(f"site {s.site}: {err}") from err
        sets, dropped = _common_sets(per_site_sets)
        years = list(test_years) or _default_test_years(tables, sets)
        assert folder is not None
        settings = sorted(kwargs.items())
        versions = [sklearn.__version__, torch.__version__]
        cache = StepCache(folder, settings, seed, sets, versions)
        data: list[Any] = []  # every site's daily table, arrays hashed whole
        for k, t in tables.items():
            data += [k, list(t.columns), t.index.values.astype("datetime64[ns]"), t.to_numpy(float)]
        for sp in splits:
            run = partial(
                _run_split, sp, tables, sets, out_dir, years, seed, progress, command, kwargs
            )
            results[sp] = cached(cache, [sp, years if sp == "years" else None, *data], run)
        igbp = {s.site: s.igbp for s in inputs}
        frames = split_tables(results, igbp, reference)
        used = [
            {"site": s.site, "igbp": s.igbp, "lat": s.lat, "cube": str(s.cube), "flux": str(s.flux)}
            for s in inputs
        ]
        summary = {
            "sites": used,
            "skipped": skipped,
            "dropped_feature_sets": dropped,
            "test_years": years if "years" in splits else None,
            "splits": splits,
        }
        _write_outputs(out_dir, summary, frames, reference, name if model else None, command, seed)
    return {**summary, "splits": results, "tables": frames, "reference": reference}


def _run_split(
    split: str,
    tables: Mapping[str, pd.DataFrame],
    sets: Mapping[str, list[str]],
    out: Path,
    years: list[int],
    seed: int,
    progress: bool,
    command: str | None,
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    import json

    from latentcube.evaluation.gpp import run_gpp

    what = f"test years {years}" if split == "years" else "leave-one-site-out"
    res = run_gpp(
        tables,
        sets,
        out / split,
        test_years=years if split == "years" else None,
        seed=seed,
        progress=progress,
        resume=True,
        title=f"GPP at {len(tables)} sites, {what}",
        command=command,
        **kwargs,
    )
    # as stored in the step cache, so a resumed run's numbers are the same objects
    return dict(json.loads(json.dumps(res, default=_plain)))


def _plain(o: Any) -> Any:
    return o.item() if isinstance(o, np.generic) else str(o)


def _write_outputs(
    out: Path,
    summary: Mapping[str, Any],
    frames: Mapping[str, pd.DataFrame],
    reference: pd.DataFrame | None,
    embedding: str | None,
    command: str | None,
    seed: int,
) -> None:
    from latentcube.evaluation.report import write_report

    for key in ("predictions", "sites", "pooled", "igbp"):
        frames[key].to_csv(out / f"{key}.csv", index=False)
    pd.DataFrame(summary["skipped"], columns=["site", "reason"]).to_csv(
        out / "skipped.csv", index=False
    )
    head = embedding or "indices (4)"
    show = ["climatology", head]
    metric_cols = ["r2", "rmse", "nrmse", "bias", "n"]
    pooled = frames["pooled"]
    sites = frames["sites"][frames["sites"]["features"].isin(show)]
    igbp = frames["igbp"][frames["igbp"]["features"].isin(show)]
    used = ", ".join(f"{s['site']} ({s['igbp']})" for s in summary["sites"])
    body = (
        f"Sites: {used}. Splits: {', '.join(summary['splits'])}"
        + (f" (test years {summary['test_years']})" if summary["test_years"] else "")
        + ". R2, RMSE and bias in gC m-2 d-1; NRMSE = RMSE / mean observed GPP. "
        "Every feature set and model per split: `pooled.csv`; per site: `sites.csv`; "
        "per IGBP class: `igbp.csv`; each test prediction: `predictions.csv`; each "
        "split's own report: `years/`, `loso/`."
    )
    sections = [
        ("Sites and splits", body),
        ("Pooled over all test windows", _markdown(pooled, ["split", "features", "model",
                                                             *metric_cols])),
        (f"Per site ({', '.join(show)})",
         _markdown(sites, ["split", "site", "igbp", "features", "model", *metric_cols])),
        (f"Per IGBP class ({', '.join(show)})",
         _markdown(igbp, ["split", "igbp", "features", "model", *metric_cols, "n_sites"])),
    ]  # fmt: skip
    if reference is not None:
        ours = frames["sites"]
        near = "loso" if "loso" in summary["splits"] else "years"  # loso is the like split
        ours = ours[(ours["split"] == near) & ours["features"].isin(show)]
        ours = ours[ours["site"].isin(reference.index)]
        text = (
            "Median (and best) of the published per-site scores of each site over the result "
            "files (CarbonFluxBench: MODIS + ERA5-Land features, zero-shot on held-out sites, "
            f"other years), beside our {near} scores of the same site. "
        )
        if ours.empty:
            text += "None of the evaluated sites is in the published results."
        else:
            text += "\n\n" + _markdown(
                ours,
                ["site", "features", "model", "r2", "rmse", "ref_r2_median", "ref_r2_best",
                 "ref_rmse_median", "ref_n"],
            )  # fmt: skip
        sections.append(("Published reference", text))
    if summary["skipped"]:
        lines = [f"- {s['site']}: {s['reason']}" for s in summary["skipped"]]
        sections.append(("Skipped sites", "\n".join(lines)))
    if summary["dropped_feature_sets"]:
        sections.append(
            (
                "Feature sets left out",
                "Not at every site with the same features: "
                + ", ".join(summary["dropped_feature_sets"]),
            )
        )
    results = {
        "gpp_sites": {
            **summary,
            "pooled": frames["pooled"].to_dict(orient="records"),
            "sites_scores": frames["sites"].to_dict(orient="records"),
            "igbp": frames["igbp"].to_dict(orient="records"),
        }
    }
    title = f"GPP at {len(summary['sites'])} flux sites"
    write_report(out, title, results, sections, command=command, seed=seed)

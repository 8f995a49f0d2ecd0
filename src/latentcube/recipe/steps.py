"""The steps of the paper recipe and the run that executes them, resumable after a kill.

Each step calls the library function that does its work (and resumes internally:
``build_cubes`` builds only missing or failed sites, the training loop resumes from
``last.pt``, ``embed_to_zarr`` from its chunk markers, the GPP runs from their step
caches) and, once it has returned, writes a done-marker
``<out>/.recipe/<step>.json`` atomically. A rerun skips every step whose marker
holds the same settings (the digest of the recipe fields the step depends on), so a
run killed anywhere resumes at the step it was in; a marker written with other
settings is refused, naming the step, instead of mixing two configurations.

Layout of ``out``::

    recipe.json             the recipe as run
    sites.csv               training sites (one row per cube)
    flux_sites.csv          evaluation sites
    cubes/train/            training cubes and their manifest.csv
    cubes/flux/             evaluation cubes and their manifest.csv
    models/s2, models/s1    stage-1 runs (best.pt)
    models/fusion           the fused model (best.pt)
    embeddings/<id>.zarr    embeddings of the evaluation cubes
    gpp/<id>/               GPP report per site
    report/report.md        the one report (also results.json)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from latentcube.errors import RecipeError
from latentcube.recipe.config import PaperRecipe

__all__ = ["STEPS", "Step", "done_steps", "gpp_at_sites", "gpp_pooled", "run_recipe"]

Log = Callable[[str], Any]


@dataclass(frozen=True)
class Step:
    """One step: its name, what it makes, the recipe fields it depends on, its function."""

    name: str
    what: str
    output: str
    depends: tuple[str, ...]
    run: Callable[[PaperRecipe, Path, Log], dict[str, Any]]


# --------------------------------------------------------------------------- helpers


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` atomically: a temporary file beside it, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _marker(out: Path, step: str) -> Path:
    return out / ".recipe" / f"{step}.json"


def _device_options(recipe: PaperRecipe) -> dict[str, Any]:
    """The recipe's ``device`` and ``precision`` that are set (else the trainers' defaults)."""
    options = {"device": recipe.device, "precision": recipe.precision}
    return {k: v for k, v in options.items() if v is not None}


def _train_options(recipe: PaperRecipe, epochs: int) -> dict[str, Any]:
    m = recipe.models
    train: dict[str, Any] = {"max_epochs": epochs, "batch_size": m.batch_size}
    if m.max_seconds is not None:
        train["max_seconds"] = m.max_seconds
    return train


def _ok_stores(folder: Path, what: str) -> list[Path]:
    from latentcube.cube.sites import manifest_stores

    stores = manifest_stores(folder)
    if not stores:
        raise RecipeError(
            f"no {what} cube was built ({folder / 'manifest.csv'} lists only failures); "
            "see its error column"
        )
    return stores


# ----------------------------------------------------------------------------- steps


def _sites(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    from latentcube.cube.sampling import sample_sites
    from latentcube.cube.sites import flux_sites

    s = recipe.sites
    table = sample_sites(
        s.n_sites,
        s.region,
        s.years,
        seed=s.seed,
        size_m=s.size_m,
        windows=s.windows,
        min_distance_deg=s.min_distance_deg,
    )
    _write_text(out / "sites.csv", table.to_csv(index=False))
    f = recipe.flux
    if f.table is not None:
        try:
            flux = pd.read_csv(f.table, dtype={"id": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise RecipeError(f"{f.table}: not a readable sites table ({err})") from None
        missing = [c for c in ("id", "lat", "lon") if c not in flux.columns]
        if missing:
            raise RecipeError(f"{f.table}: missing column(s) {', '.join(missing)}")
        flux = flux.assign(start=f.start, end=f.end, size_m=f.size_m)
    else:
        flux = flux_sites(f.start, f.end, f.size_m)
        if f.sites:
            unknown = sorted(set(f.sites) - set(flux["id"]))
            if unknown:
                raise RecipeError(f"flux.sites: unknown site(s) {', '.join(unknown)}")
            flux = flux[flux["id"].isin(f.sites)]
    _write_text(out / "flux_sites.csv", flux.to_csv(index=False))
    log(f"{len(table)} training cubes at {s.n_sites} sites, {len(flux)} flux sites")
    return {"training_cubes": len(table), "flux_sites": len(flux)}


def _build(recipe: PaperRecipe, sites: Path, folder: Path, size_m: float) -> dict[str, Any]:
    from latentcube.cube.sites import build_cubes

    kwargs: dict[str, Any] = {"sensors": recipe.sensors}
    if recipe.catalog is not None:
        kwargs["catalog"] = recipe.catalog
    man = build_cubes(
        sites,
        folder,
        scheduler=recipe.scheduler,
        workers=recipe.workers,
        progress=False,
        size_m=size_m,
        **kwargs,
    )
    ok = int((man["status"] == "ok").sum())
    return {"ok": ok, "failed": int(len(man) - ok)}


def _train_cubes(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    res = _build(recipe, out / "sites.csv", out / "cubes" / "train", recipe.sites.size_m)
    log(f"training cubes: {res['ok']} built, {res['failed']} failed")
    _ok_stores(out / "cubes" / "train", "training")
    return res


def _stage1(sensor: str) -> Callable[[PaperRecipe, Path, Log], dict[str, Any]]:
    def step(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
        from latentcube.training.stage1 import fit_autoencoder

        m = recipe.models
        stores = _ok_stores(out / "cubes" / "train", "training")
        res = fit_autoencoder(
            [str(p) for p in stores],
            getattr(m, sensor),
            out / "models" / sensor,
            sensor=sensor,
            preset=m.preset,
            seed=m.seed,
            train=_train_options(recipe, m.epochs),
            progress=False,
            **_device_options(recipe),
        )
        log(f"stage 1 {sensor}: {res.epochs} epochs, {res.steps} steps, best {res.best_val:.4f}")
        return {"epochs": res.epochs, "steps": res.steps, "best_val": res.best_val}

    return step


def _fusion(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    from latentcube.training.fusion import fit_fusion

    m = recipe.models
    stores = _ok_stores(out / "cubes" / "train", "training")
    aes = {s: out / "models" / s / "best.pt" for s in recipe.sensors}
    res = fit_fusion(
        [str(p) for p in stores],
        aes,
        out / "models" / "fusion",
        preset=m.fusion_preset,
        seed=m.seed,
        mode=m.fusion_mode,
        train=_train_options(recipe, m.fusion_epochs),
        progress=False,
        **_device_options(recipe),
    )
    log(f"fusion: {res.epochs} epochs, {res.steps} steps, best {res.best_val:.4f}")
    return {"epochs": res.epochs, "steps": res.steps, "best_val": res.best_val}


def _flux_cubes(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    res = _build(recipe, out / "flux_sites.csv", out / "cubes" / "flux", recipe.flux.size_m)
    log(f"flux-site cubes: {res['ok']} built, {res['failed']} failed")
    _ok_stores(out / "cubes" / "flux", "flux-site")
    return res


def _embed(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    from latentcube.embedding_store import store_status
    from latentcube.inference import embed_to_zarr

    model = out / "models" / "fusion" / "best.pt"
    done = 0
    for cube in _ok_stores(out / "cubes" / "flux", "flux-site"):
        target = out / "embeddings" / cube.name
        if store_status(target)[0] != "complete":  # an unfinished store resumes
            e = recipe.embed
            embed_to_zarr(
                cube,
                model,
                target,
                chunk=e.chunk,
                time_chunk=e.time_chunk,
                workers=recipe.workers,
                progress=False,
            )
        done += 1
    log(f"{done} evaluation cubes embedded")
    return {"embedded": done}


def _flux_file(folder: Path | None, site: str) -> Path | None:
    """The flux record of ``site`` in ``folder``, or None without one.

    Found as the many-site evaluation finds it
    (:func:`~latentcube.evaluation.gpp_sites.find_flux`), so the per-site and the
    pooled GPP steps read the same record.
    """
    from latentcube.errors import EvaluationError
    from latentcube.evaluation.gpp_sites import find_flux

    if folder is None or not Path(folder).is_dir():
        return None
    try:
        return find_flux(folder, site)
    except EvaluationError:
        return None


def _gpp_options(recipe: PaperRecipe) -> dict[str, Any]:
    """The GPP settings of the recipe, as both GPP evaluations take them."""
    g = recipe.gpp
    return {
        "test_years": g.test_years,
        "gap_fill": g.gap_fill,
        "progress": False,
        "models": g.models,
        "n_trials": g.n_trials,
        "max_epochs": g.max_epochs,
        "time_budget": g.time_budget,
        "seq_len": g.seq_len,
        "stride": g.stride,
        "seed": recipe.models.seed,
    }


def gpp_at_sites(
    recipe: PaperRecipe, sites: pd.DataFrame, out: Path, model_name: str = "embedding"
) -> dict[str, dict[str, Any]]:
    """GPP at every flux site that has a cube, an embedding and a flux file.

    .. note:: One single-site run (:func:`~latentcube.evaluation.runs.evaluate_gpp`)
       per site, each split by years; :func:`gpp_pooled` then pools the sites
       evaluated here, leave-one-site-out.

    Returns
    -------
    dict
        Site -> ``{"status": "ok", "result": run_gpp's result}`` or
        ``{"status": "skipped", "why": ...}``.
    """
    from latentcube.embedding_store import store_status
    from latentcube.evaluation.runs import evaluate_gpp

    g = recipe.gpp
    results: dict[str, dict[str, Any]] = {}
    for row in sites.to_dict("records"):
        sid = str(row["id"])
        cube = out / "cubes" / "flux" / f"{sid}.zarr"
        emb = out / "embeddings" / f"{sid}.zarr"
        flux = _flux_file(recipe.flux.flux_dir, sid)
        if flux is None:
            results[sid] = {"status": "skipped", "why": "no flux file"}
            continue
        if store_status(emb)[0] != "complete":
            results[sid] = {"status": "skipped", "why": "no cube or embedding"}
            continue
        report = out / "gpp" / sid
        saved = report / "results.json"
        if saved.is_file():  # written last by the site's report
            results[sid] = {"status": "ok", "result": json.loads(saved.read_text())["gpp"]}
            continue
        result = evaluate_gpp(
            flux,
            report,
            site=sid,
            lat=float(row["lat"]),
            cube=cube if g.baselines else None,
            embedding=emb,
            name=model_name,
            **_gpp_options(recipe),
        )
        results[sid] = {"status": "ok", "result": result}
    return results


def _gpp(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    sites = pd.read_csv(out / "flux_sites.csv", dtype={"id": str})
    results = gpp_at_sites(recipe, sites, out)
    _write_text(out / "gpp" / "sites.json", json.dumps(results, indent=1, default=str))
    ok = sum(r["status"] == "ok" for r in results.values())
    if ok == 0:
        why = sorted({r.get("why", "") for r in results.values()})
        raise RecipeError(
            f"GPP: no site could be evaluated ({'; '.join(why)}); flux files are looked "
            f"up in flux.flux_dir ({recipe.flux.flux_dir}) by site id"
        )
    log(f"GPP evaluated at {ok} of {len(results)} flux sites")
    pooled = gpp_pooled(recipe, sites, out, [k for k, r in results.items() if r["status"] == "ok"])
    if pooled is not None:
        log(f"GPP pooled over {len(pooled)} sites, leave-one-site-out: {out / 'gpp' / 'pooled'}")
    return {"sites": ok, "skipped": len(results) - ok, "pooled": bool(pooled)}


def gpp_pooled(
    recipe: PaperRecipe,
    sites: pd.DataFrame,
    out: Path,
    ok: Sequence[str],
    model_name: str = "embedding",
) -> list[str] | None:
    """Leave-one-site-out GPP over the sites evaluated one by one (two or more).

    Runs :func:`~latentcube.evaluation.gpp_sites.evaluate_gpp_sites` on the
    recipe's own flux-site cubes and embeddings (no second embedding), with the
    sites' IGBP classes from the recipe's table (column ``igbp``) or the shipped
    registry (``unknown`` otherwise), into ``out/gpp/pooled``.

    Returns
    -------
    list of str or None
        The sites pooled, or None with fewer than two.
    """
    from latentcube.cube.sites import flux_sites
    from latentcube.evaluation.gpp_sites import evaluate_gpp_sites

    if len(ok) < 2 or recipe.flux.flux_dir is None:
        return None
    rows = sites.set_index(sites["id"].astype(str))
    registry = flux_sites().set_index("id")["igbp"].astype(str).to_dict()
    table = pd.DataFrame(
        {
            "id": list(ok),
            "status": "ok",
            "path": [f"../cubes/flux/{sid}.zarr" for sid in ok],
            "lat": [float(rows.loc[sid, "lat"]) for sid in ok],
            "igbp": [
                str(rows.loc[sid, "igbp"])
                if "igbp" in rows.columns
                else registry.get(sid, "unknown")
                for sid in ok
            ],
        }
    )
    manifest = out / "gpp" / "pooled-manifest.csv"
    classes = out / "gpp" / "pooled-sites.csv"
    _write_text(manifest, table[["id", "status", "path", "lat"]].to_csv(index=False))
    _write_text(classes, table[["id", "igbp"]].to_csv(index=False))
    evaluate_gpp_sites(
        manifest,
        recipe.flux.flux_dir,
        out / "gpp" / "pooled",
        split="loso",
        sites=classes,
        embeddings={sid: out / "embeddings" / f"{sid}.zarr" for sid in ok},
        name=model_name,
        **_gpp_options(recipe),
    )
    return list(ok)


def _report(recipe: PaperRecipe, out: Path, log: Log) -> dict[str, Any]:
    from latentcube.recipe.report import write_recipe_report

    path = write_recipe_report(recipe, out, done_steps(out))
    log(f"report: {path}")
    return {"report": str(path.relative_to(out))}


# the recipe fields each step's output depends on (its marker's key)
_CUBES = ("catalog", "sensors", "sites")
_MODELS = (*_CUBES, "models")
_FLUX = ("catalog", "sensors", "flux")
_EVAL = (*_MODELS, "flux", "embed")
STEPS: tuple[Step, ...] = (
    Step("sites", "sample the training sites; list the flux sites", "sites.csv",
         ("sites", "flux"), _sites),
    Step("train_cubes", "build the training cubes", "cubes/train", _CUBES, _train_cubes),
    Step("train_s2", "train stage 1 on S2", "models/s2", _MODELS, _stage1("s2")),
    Step("train_s1", "train stage 1 on S1", "models/s1", _MODELS, _stage1("s1")),
    Step("train_fusion", "train the fused model", "models/fusion", _MODELS, _fusion),
    Step("flux_cubes", "build the evaluation cubes at the flux sites", "cubes/flux", _FLUX,
         _flux_cubes),
    Step("embed", "embed the evaluation cubes", "embeddings", _EVAL, _embed),
    Step("gpp", "GPP at the flux sites", "gpp", (*_EVAL, "gpp", "flux_dir"), _gpp),
    Step("report", "write the report", "report/report.md", (*_EVAL, "gpp", "flux_dir"),
         _report),
)  # fmt: skip


# ------------------------------------------------------------------------------- run


def done_steps(out: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The done-markers of ``out``: step -> what its marker holds."""
    folder = Path(out) / ".recipe"
    found: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        path = folder / f"{step.name}.json"
        if path.is_file():
            try:
                found[step.name] = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a marker is written atomically; an unreadable one is redone
    return found


def run_recipe(
    recipe: PaperRecipe,
    out: str | os.PathLike[str],
    *,
    steps: Sequence[str] | None = None,
    log: Log | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the recipe into ``out``, skipping every step already done with these settings.

    Parameters
    ----------
    recipe
        The configuration.
    out
        Output folder (created; locked for the run).
    steps
        Run only these steps (default all, in order); the steps before them
        must be done.
    log
        Called with one line per step.

    Returns
    -------
    dict
        Step -> its marker (``status`` ``"done"`` or ``"skipped"`` for this run,
        ``seconds``, ``finished``, the step's figures).

    Raises
    ------
    RecipeError
        A step done before with other settings, an unknown step, a step whose
        inputs are missing.
    """
    from latentcube.io import check_writable, locked

    say: Log = log or (lambda _msg: None)
    names = [s.name for s in STEPS]
    unknown = sorted(set(steps or ()) - set(names))
    if unknown:
        raise RecipeError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(names)}")
    root = Path(out)
    check_writable(root)
    root.mkdir(parents=True, exist_ok=True)
    ran: dict[str, dict[str, Any]] = {}
    with locked(root):
        before = done_steps(root)
        keys = {step.name: recipe.digest(*step.depends) for step in STEPS}
        for step in STEPS:  # every check before anything is written
            old = before.get(step.name)
            if old is not None and old.get("key") != keys[step.name]:
                raise RecipeError(
                    f"step {step.name} was done in {root} with other settings (fields "
                    f"{', '.join(step.depends)}); use another output folder"
                )
            if steps and step.name not in steps and old is None:
                if names.index(step.name) < max(names.index(s) for s in steps):
                    raise RecipeError(f"step {step.name} is not done yet; run it first")
        text = recipe.model_dump_json(indent=1)
        saved = root / "recipe.json"
        if not saved.is_file() or saved.read_text(encoding="utf-8") != text:
            _write_text(saved, text)
        for step in STEPS:
            if steps and step.name not in steps:
                continue
            key = keys[step.name]
            if step.name in before:
                say(f"[{step.name}] done before, skipped")
                ran[step.name] = {**before[step.name], "status": "skipped"}
                continue
            say(f"[{step.name}] {step.what}")
            t0, c0 = time.perf_counter(), time.process_time()
            figures = step.run(recipe, root, say)
            marker = {
                "step": step.name,
                "key": key,
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),
                "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                **figures,
            }
            _write_text(_marker(root, step.name), json.dumps(marker, indent=1))
            before[step.name] = marker
            ran[step.name] = {**marker, "status": "done"}
    return ran

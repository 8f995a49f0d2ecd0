"""The one report of the paper recipe: steps, cubes, models and GPP at every flux site."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcube.recipe.config import PaperRecipe

__all__ = ["gpp_site_table", "write_recipe_report"]


def _csv_table(path: Path) -> str:
    """A CSV file as a markdown table (numbers to 3 decimals)."""
    df = pd.read_csv(path)
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def gpp_site_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table: one row per site, feature set and model (test RMSE, NRMSE, R2).

    Sites that were not evaluated are listed with the reason. A last block gives,
    per feature set and model, the mean over the evaluated sites.
    """
    lines = [
        "| site | features | model | R2 | RMSE | NRMSE | bias | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pooled: dict[tuple[str, str], list[dict[str, float]]] = {}
    for site, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {site} | {r.get('why', 'not evaluated')} | | | | | | |")
            continue
        for name, by_model in r["result"]["scores"].items():
            for model, s in by_model.items():
                m = s["overall"]
                pooled.setdefault((name, model), []).append(m)
                lines.append(
                    f"| {site} | {name} | {model} | {m['r2']:.3f} | {m['rmse']:.3f} | "
                    f"{m['nrmse']:.3f} | {m['bias']:+.3f} | {m['n']} |"
                )
    if pooled:
        lines += [
            "",
            "Mean over the evaluated sites:",
            "",
            "| features | model | sites | R2 | RMSE | NRMSE |",
            "|---|---|---|---|---|---|",
        ]
        for (name, model), ms in pooled.items():
            mean = {k: float(np.nanmean([m[k] for m in ms])) for k in ("r2", "rmse", "nrmse")}
            lines.append(
                f"| {name} | {model} | {len(ms)} | {mean['r2']:.3f} | {mean['rmse']:.3f} | "
                f"{mean['nrmse']:.3f} |"
            )
    return "\n".join(lines)


def _manifest_line(folder: Path) -> str:
    from latentcube.cube.sites import read_manifest

    man = read_manifest(folder)
    ok = man[man["status"] == "ok"]
    failed = man[man["status"] == "failed"]
    dates = pd.to_numeric(ok["dates"], errors="coerce")
    text = f"{len(ok)} built, {len(failed)} failed"
    if len(ok):
        text += f"; dates per cube {int(dates.min())}-{int(dates.max())}"
        text += f" (median {dates.median():g})"
    if len(failed):
        errors = failed["error"].astype(str).str.split(":").str[0].value_counts()
        text += "; failures: " + ", ".join(f"{k} x {v}" for k, v in errors.items())
    return text


def write_recipe_report(
    recipe: PaperRecipe, out: Path, markers: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Write ``<out>/report/report.md`` and ``results.json`` from the steps' outputs.

    Returns
    -------
    pathlib.Path
        The ``report.md`` path.
    """
    from latentcube.evaluation.report import write_report

    gpp = json.loads((out / "gpp" / "sites.json").read_text())
    steps = ["| step | seconds | CPU seconds | finished |", "|---|---|---|---|"]
    for name, m in markers.items():
        steps.append(f"| {name} | {m.get('seconds', '')} | {m.get('cpu_seconds', '')} | "
                     f"{m.get('finished', '')} |")  # fmt: skip
    models = []
    for stage in ("s2", "s1", "fusion"):
        m = markers.get(f"train_{stage}", {})
        if m:
            models.append(
                f"- {stage}: {m.get('epochs')} epochs, {m.get('steps')} steps, best validation "
                f"centre-pixel MAE {float(m.get('best_val', float('nan'))):.4f} "
                f"(`models/{stage}/best.pt`)"
            )
    cubes = (
        f"- training cubes (`cubes/train`): {_manifest_line(out / 'cubes' / 'train')}\n"
        f"- flux-site cubes (`cubes/flux`): {_manifest_line(out / 'cubes' / 'flux')}"
    )
    sections = [
        ("Steps", "\n".join(steps)),
        ("Cubes", cubes),
        ("Models", "\n".join(models)),
        (
            "GPP at the flux sites",
            "Each site split by years (test years "
            f"{list(recipe.gpp.test_years)}), windows of {recipe.gpp.seq_len} days every "
            f"{recipe.gpp.stride} days; R2, RMSE and bias in gC m-2 d-1. Per-site reports: "
            "`gpp/<site>/report.md`.\n\n" + gpp_site_table(gpp),
        ),
    ]
    pooled = out / "gpp" / "pooled" / "pooled.csv"
    if pooled.is_file():
        sections.append(
            (
                "GPP pooled over the sites, leave-one-site-out",
                "Each site predicted by a model trained on the other sites (all years); per "
                "site, per IGBP class and every prediction in `gpp/pooled/`.\n\n"
                + _csv_table(pooled),
            )
        )
    results = {"recipe": recipe.model_dump(mode="json"), "steps": dict(markers), "gpp": gpp}
    return write_report(
        out / "report",
        recipe.name,
        results,
        sections,
        command="latentcube reproduce",
        seed=recipe.models.seed,
    )

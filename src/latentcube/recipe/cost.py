"""The plan of a recipe and its cost, from rates measured on a machine.

:func:`plan` lists the steps of :func:`~latentcube.recipe.steps.run_recipe` with
what each reads, computes and writes, estimated from the rates in a JSON file
written by ``benchmarks/bench_recipe_rates.py`` (default: the rates shipped in
``latentcube/samples/recipe_rates.json``, measured on the project's development
machine). Figures on a GPU are given only where a GPU rate was measured; otherwise
the plan says "not measured on a GPU".

Quantities that are facts about the data, not rates of this machine, are
assumptions stated in the plan: Sentinel-2 acquisitions per year at one place (73,
the 5-day revisit of S2A+S2B, one tile) and Sentinel-1 acquisitions per year (61,
the 6-day repeat of S1A+S1B in one orbit direction). The share of dates kept after
cloud screening and the share of valid pixels are measured on the sample data.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from latentcube.errors import RecipeError
from latentcube.recipe.config import PaperRecipe

__all__ = [
    "S1_PER_YEAR",
    "S2_PER_YEAR",
    "PlanStep",
    "format_plan",
    "load_rates",
    "plan",
    "training_windows",
]

#: Sentinel-2 acquisitions per year at one place (5-day revisit), an assumption.
S2_PER_YEAR = 73
#: Sentinel-1 acquisitions per year at one place (6-day repeat, one orbit direction).
S1_PER_YEAR = 61
GB = 1e9


@dataclass
class PlanStep:
    """One step of the plan and its estimated cost (``None``: not applicable)."""

    name: str
    what: str
    read_gb: float | None = None
    cpu_hours: float | None = None
    gpu_hours: float | None = None
    steps: int | None = None
    disk_gb: float | None = None
    done: bool = False
    notes: list[str] = field(default_factory=list)


def load_rates(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The measured rates (``benchmarks/bench_recipe_rates.py``); default the shipped ones."""
    try:
        if path is None:
            ref = resources.files("latentcube").joinpath("samples/recipe_rates.json")
            return dict(json.loads(ref.read_text(encoding="utf-8")))
        return dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"{path or 'recipe_rates.json'}: no readable rates ({err})") from None


def training_windows(size_px: int, dates: int, valid_fraction: float) -> float:
    """Windows one cube gives to ``split_windows`` (stride 3 dates and 3 px, 20-date pools).

    ``((size_px - 15) // 3 + 1)**2`` places times ``(dates - 20) // 3 + 1`` time
    positions, times the share of windows whose centre pixel is valid.
    """
    if size_px < 15 or dates < 20:
        return 0.0
    return ((size_px - 15) // 3 + 1) ** 2 * ((dates - 20) // 3 + 1) * valid_fraction


def _cubes(
    rates: dict[str, Any], n: int, size_m: float, years: float, sensors: tuple[str, ...]
) -> tuple[float, float, float, float]:
    """(GB read, CPU hours, disk GB, kept dates per cube) of ``n`` cubes."""
    c = rates["cube"]
    px = (size_m / 10.0) ** 2
    candidates = S2_PER_YEAR * years
    kept = candidates * c["kept_date_fraction"]
    read = px * (candidates * c["scl_bytes_per_px"] + kept * c["s2_bytes_per_px"])
    if "s1" in sensors:
        read += px * S1_PER_YEAR * years * c["s1_bytes_per_px"]
    cpu = c["cpu_s_per_px_date"] * px * candidates
    disk = c["store_bytes_per_px_date"] * px * kept
    return n * read / GB, n * cpu / 3600, n * disk / GB, kept


def _gpu(rates: dict[str, Any], key: str, variant: str) -> float | None:
    gpu = (rates.get(key) or {}).get("gpu") or {}
    value = gpu.get(variant)
    return float(value) if value else None


def plan(
    recipe: PaperRecipe,
    rates: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> list[PlanStep]:
    """The steps of ``recipe`` with their estimated cost.

    Parameters
    ----------
    recipe
        The configuration.
    rates
        Measured rates (:func:`load_rates`; default the shipped ones).
    out
        An output folder: steps already done there are flagged ``done``.

    Returns
    -------
    list of PlanStep
        In the order :func:`~latentcube.recipe.steps.run_recipe` runs them.
    """
    from latentcube.recipe.steps import STEPS, done_steps

    r = rates if rates is not None else load_rates()
    done = done_steps(out) if out is not None and Path(out).is_dir() else {}
    s, m, f = recipe.sites, recipe.models, recipe.flux
    n_flux = len(f.sites) if f.sites else (_table_rows(f.table) if f.table else 47)
    out_steps: list[PlanStep] = []
    what = {st.name: st.what for st in STEPS}

    read, cpu, disk, kept = _cubes(r, recipe.n_cubes, s.size_m, 1.0, recipe.sensors)
    size_px = round(s.size_m / 10.0)
    per_cube = training_windows(size_px, int(kept), r["cube"]["valid_fraction"])
    train_windows = recipe.n_cubes * 0.75 * per_cube  # split_windows' val_fraction 0.25
    per_epoch = math.ceil(train_windows / m.batch_size)
    out_steps.append(PlanStep("sites", what["sites"], notes=[f"{recipe.n_cubes} cubes"]))
    out_steps.append(
        PlanStep(
            "train_cubes",
            what["train_cubes"],
            read_gb=read,
            cpu_hours=cpu,
            disk_gb=disk,
            notes=[f"{recipe.n_cubes} cubes of {size_px} x {size_px} px, ~{kept:.0f} dates each"],
        )
    )
    batch_scale = m.batch_size / r["train_batch_size"]
    for stage, variant, epochs in (
        ("s2", m.s2, m.epochs),
        ("s1", m.s1, m.epochs),
        ("fusion", m.s2, m.fusion_epochs),
    ):
        sec = r["train_s_per_step"]["cpu"][stage][variant] * batch_scale
        gpu = _gpu(r, "train_s_per_step_gpu", f"{stage}:{variant}")
        steps = per_epoch * epochs
        out_steps.append(
            PlanStep(
                f"train_{stage}",
                what[f"train_{stage}"],
                cpu_hours=steps * sec / 3600,
                gpu_hours=steps * gpu / 3600 if gpu else None,
                steps=steps,
                disk_gb=0.1,
                notes=[
                    f"{variant} model, {train_windows:,.0f} training windows, {per_epoch:,} steps"
                    f" per epoch of batch {m.batch_size} ({per_epoch * sec / 3600:.2f} CPU hours "
                    f"per epoch), {epochs} epochs at most (early stopping may end sooner)"
                ],
            )
        )
    years = (_year(f.end) - _year(f.start)) + 1
    f_read, f_cpu, f_disk, f_kept = _cubes(r, n_flux, f.size_m, years, recipe.sensors)
    out_steps.append(
        PlanStep(
            "flux_cubes",
            what["flux_cubes"],
            read_gb=f_read,
            cpu_hours=f_cpu,
            disk_gb=f_disk,
            notes=[f"{n_flux} cubes of {f.size_m / 1000:g} km over {years} years"],
        )
    )
    px_dates = n_flux * (f.size_m / 10.0) ** 2 * f_kept
    rate = r["embed_px_dates_per_s"]["cpu"][m.s2]
    gpu_rate = _gpu(r, "embed_px_dates_per_s_gpu", m.s2)
    out_steps.append(
        PlanStep(
            "embed",
            what["embed"],
            cpu_hours=px_dates / rate / 3600,
            gpu_hours=px_dates / gpu_rate / 3600 if gpu_rate else None,
            disk_gb=px_dates * r["embedding_bytes_per_px_date"] / GB,
            notes=[f"{px_dates:,.0f} pixel-dates with the fused {m.s2} model"],
        )
    )
    g = recipe.gpp
    sets = 2 + (8 if g.baselines else 0)
    bound = n_flux * sets * (g.time_budget or 0) / 3600 if "transformer" in g.models else 0.0
    out_steps.append(
        PlanStep(
            "gpp",
            what["gpp"],
            cpu_hours=bound,
            notes=[
                f"{n_flux} sites x {sets} feature sets; the transformer search is bounded by "
                f"{g.time_budget} s per set and site (gradient boosting not counted)"
            ],
        )
    )
    out_steps.append(PlanStep("report", what["report"]))
    for st in out_steps:
        st.done = st.name in done
    return out_steps


def _year(date: str) -> int:
    return int(str(date)[:4])


def _table_rows(path: Path | None) -> int:
    if path is None or not Path(path).is_file():
        return 0
    with open(path, encoding="utf-8") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


def _num(v: float | int | None, fmt: str = ".1f") -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else format(v, fmt)


def format_plan(steps: list[PlanStep], rates: dict[str, Any], recipe: PaperRecipe) -> str:
    """The plan as a text table, with totals, notes and the rates it rests on."""
    head = f"{'step':<13} {'GB read':>9} {'CPU h':>10} {'GPU h':>8} {'steps':>14} {'disk GB':>9}"
    lines = [f"plan of '{recipe.name}'", "", head, "-" * len(head)]
    for st in steps:
        gpu = _num(st.gpu_hours) if st.gpu_hours is not None else "n/m"
        if st.cpu_hours is None:
            gpu = "-"
        flag = " (done)" if st.done else ""
        lines.append(
            f"{st.name:<13} {_num(st.read_gb):>9} {_num(st.cpu_hours):>10} {gpu:>8} "
            f"{_num(st.steps):>14} {_num(st.disk_gb):>9}{flag}"
        )
    tot = {
        k: sum(getattr(st, k) or 0.0 for st in steps) for k in ("read_gb", "cpu_hours", "disk_gb")
    }
    lines += [
        "-" * len(head),
        f"{'total':<13} {tot['read_gb']:>9.1f} {tot['cpu_hours']:>10.1f} {'':>8} {'':>14} "
        f"{tot['disk_gb']:>9.1f}",
        "",
        "GPU h: n/m = not measured on a GPU (no GPU rate in the rates file).",
        "",
    ]
    lines += [f"{st.name}: {note}" for st in steps for note in st.notes]
    c = rates["cube"]
    per_step = rates["train_s_per_step"]["cpu"]
    train = "; ".join(
        f"{stage} " + ", ".join(f"{v} {sec:.3f}" for v, sec in per_step[stage].items())
        for stage in ("s2", "s1", "fusion")
    )
    lines += [
        "",
        f"rates: {rates.get('machine', '?')}, measured {rates.get('measured', '?')}",
        f"  cube build {c['cpu_s_per_px_date'] * 1e6:.3f} CPU-s per million px-dates (local "
        "COGs: no network time); read "
        f"{c['s2_bytes_per_px']:.2f} B/px per S2 date (10 bands), {c['scl_bytes_per_px']:.3f} "
        f"B/px SCL, {c['s1_bytes_per_px']:.2f} B/px per S1 acquisition",
        f"  store {c['store_bytes_per_px_date']:.2f} B per px-date; dates kept after "
        f"screening {c['kept_date_fraction']:.2f}; valid pixels {c['valid_fraction']:.2f}",
        f"  training s/step on CPU (batch {rates['train_batch_size']}): {train}",
        "  embedding px-dates/s on CPU (fused): "
        + ", ".join(f"{v} {x:,.0f}" for v, x in rates["embed_px_dates_per_s"]["cpu"].items()),
        f"  embedding store {rates['embedding_bytes_per_px_date']:.2f} B per px-date",
        f"assumed: {S2_PER_YEAR} S2 and {S1_PER_YEAR} S1 acquisitions per year at a place",
    ]
    return "\n".join(lines)

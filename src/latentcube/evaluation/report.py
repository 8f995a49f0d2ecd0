"""Self-contained evaluation reports: ``report.md`` + ``figures/*.png`` + ``results.json``.

Every number in the markdown is read from the same dictionary that is written
to ``results.json``, so the two never disagree. Figures use
:class:`matplotlib.figure.Figure` directly (no pyplot state, headless).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latentcube.provenance import environment

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "environment",
    "f1_cell",
    "paired_table",
    "plot_gpp_scatter",
    "plot_gpp_series",
    "plot_probe_scores",
    "probe_figure",
    "probe_table",
    "write_probe_report",
    "write_report",
]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def f1_cell(score: Mapping[str, Any]) -> str:
    """Macro-F1, with its standard deviation over CV repeats when there are several."""
    if "macro_f1_sd" in score:
        return f"{score['macro_f1']:.3f} ± {score['macro_f1_sd']:.3f}"
    return f"{score['macro_f1']:.3f}"


def probe_table(result: Mapping[str, Any], probes: Sequence[str] = ("logreg", "knn")) -> str:
    """Markdown table of macro-F1 and per-class F1 of every feature set and probe.

    With repeated CV (``result["repeats"] > 1``) macro-F1 is the mean over the
    repeats ± the standard deviation of the repeats.
    """
    classes = list(result["classes"])
    head = ["feature set", "dims", *[f"macro-F1 {p}" for p in probes]]
    head += [f"F1 {c} ({probes[0]})" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_probe in result["scores"].items():
        row = [name.replace("|", "\\|"), str(result.get("n_features", {}).get(name, ""))]
        row += [f1_cell(by_probe[p]) for p in probes if p in by_probe]
        row += [f"{by_probe[probes[0]]['per_class_f1'][c]:.2f}" for c in classes]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_probe_scores(result: Mapping[str, Any], path: str | os.PathLike[str], title: str) -> Path:
    """Horizontal bars of macro-F1 per feature set and probe, saved as a PNG.

    With repeated blocked CV (``macro_f1_sd`` in the scores) each bar carries an
    error bar of one standard deviation over the fold assignments.
    """
    fig = probe_figure(result, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def probe_figure(result: Mapping[str, Any], title: str) -> Figure:
    """The figure of :func:`plot_probe_scores` (one axes), not saved."""
    from matplotlib.figure import Figure

    names = list(result["scores"])
    probes = list(next(iter(result["scores"].values())))
    fig = Figure(figsize=(7, 0.35 * len(names) * len(probes) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    h = 0.8 / len(probes)
    for k, p in enumerate(probes):
        vals = [result["scores"][n][p]["macro_f1"] for n in names]
        sd = [result["scores"][n][p].get("macro_f1_sd") for n in names]
        err = None if any(v is None for v in sd) else sd
        ax.barh(np.arange(len(names)) + k * h, vals, height=h, label=p, xerr=err, capsize=2)
    ax.set_yticks(np.arange(len(names)) + h * (len(probes) - 1) / 2, names)
    ax.invert_yaxis()
    reps = result.get("repeats", 1)
    ax.set_xlabel(
        "macro-F1 (spatially blocked CV)"
        + (f"\nmean ± sd over {reps} fold assignments" if reps > 1 else "")
    )
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def plot_gpp_series(
    dates: Sequence[Any],
    observed: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """Observed vs predicted daily GPP over time (test windows' last days)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.add_subplot()
    order = np.argsort(np.asarray(dates, "datetime64[ns]"))
    d = np.asarray(dates, "datetime64[ns]")[order]
    ax.plot(d, np.asarray(observed)[order], "k.-", lw=1, label="observed")
    for name, p in predicted.items():
        ax.plot(d, np.asarray(p)[order], ".-", lw=1, label=name)
    ax.set_ylabel("GPP (gC m$^{-2}$ d$^{-1}$)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_gpp_scatter(
    observed: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """Predicted vs observed GPP, one panel per model, with the 1:1 line."""
    from matplotlib.figure import Figure

    n = max(len(predicted), 1)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3 * cols, 3 * rows), layout="constrained")
    obs = np.asarray(observed, float)
    hi = float(np.nanmax([obs.max(), *[np.nanmax(p) for p in predicted.values()]]) * 1.05)
    lo = float(min(0.0, np.nanmin(obs)))
    for k, (name, p) in enumerate(predicted.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(obs, p, s=8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("observed")
        ax.set_ylabel("predicted")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    results: Mapping[str, Any],
    sections: Sequence[tuple[str, str]],
    *,
    figures: Sequence[str | os.PathLike[str]] = (),
    command: str | None = None,
    seed: int | None = None,
) -> Path:
    """Write ``report.md`` and ``results.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        Report folder; figures are expected under it (``figures/``).
    title
        Heading of the report.
    results
        Every number of the report (JSON-serialisable).
    sections
        (heading, markdown body) pairs, in order.
    figures
        PNG files inside ``out_dir`` to show.
    command
        The command that reproduces the report (default: this process's argv).
    seed
        The seed used.

    Returns
    -------
    pathlib.Path
        The ``report.md`` path.
    """
    from latentcube._version import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "latentcube_version": __version__,
        "python": platform.python_version(),
        "environment": environment(),
        "seed": seed,
        "command": command or " ".join(["latentcube", *sys.argv[1:]]),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload = {"meta": meta, **results}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=_json_default))
    md = [f"# {title}", "", f"Reproduce: `{meta['command']}` (seed {seed}).", ""]
    for head, body in sections:
        md += [f"## {head}", "", body.strip(), ""]
    if figures:
        md += ["## Figures", ""]
        for f in figures:
            rel = Path(f).resolve().relative_to(out.resolve())
            md += [f"![{rel.stem}]({rel.as_posix()})", ""]
    md += [f"All numbers: `results.json`. latentcube {__version__}."]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _chosen_note(res: Mapping[str, Any]) -> str:
    """One line per feature set: the hyper-parameters the inner CV chose per outer fold."""
    if not res.get("tuned"):
        return "\n\nProbe hyper-parameters fixed (C = 1, 10 neighbours).\n"
    lines = [
        "\n\nHyper-parameters chosen by inner blocked CV on the training folds only "
        "(one value per outer fold):\n",
        "| feature set | logreg C | k-NN k |",
        "|---|---|---|",
    ]
    for name, by_probe in res["scores"].items():
        cells = [
            ", ".join(str(v) for c in by_probe.get(p, {}).get("chosen", []) for v in c.values())
            for p in ("logreg", "knn")
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def paired_table(res: Mapping[str, Any]) -> str:
    """Markdown table of each embedding's paired macro-F1 differences (``res["paired"]``)."""
    rows = [
        "| embedding | compared with | probe | mean difference | sd | min | max | repeats won |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ref, by_other in res.get("paired", {}).items():
        for other, by_probe in by_other.items():
            for kind, d in by_probe.items():
                rows.append(
                    f"| {ref} | {other} | {kind} | {d['mean']:+.3f} | {d['sd']:.3f} | "
                    f"{d['min']:+.3f} | {d['max']:+.3f} | {d['wins']} of {d['repeats']} |"
                )
    return "\n".join(rows) if len(rows) > 2 else ""


def write_probe_report(
    res: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    title: str,
    intro: str,
    *,
    notes: str = "",
    command: str | None = None,
    seed: int | None = None,
) -> Path:
    """A probe's report folder: bar chart, markdown table and ``results.json``."""
    out = Path(out_dir)
    task = str(res["task"])
    fig = plot_probe_scores(res, out / "figures" / f"{task}_macro_f1.png", title)
    body = (
        f"{intro} {res['n_samples']} samples, {res['n_blocks']} spatial blocks of "
        f"{res['block_px']} px, blocked CV. Classes (samples): "
        + ", ".join(f"{k} {v} ({res['class_counts'][k]})" for k, v in res["classes"].items())
        + f". Dropped (too rare or in one block): {res['dropped_classes'] or 'none'}.\n\n"
        + probe_table(res)
        + _chosen_note(res)
    )
    sections = [("Results", body)]
    n = int(res.get("repeats", 1))
    paired = paired_table(res) if n > 1 else ""
    if paired:
        sections.append(
            (
                "Embeddings against every other set",
                f"Macro-F1 of the embedding minus that of the other set, paired per "
                f"cross-validation repeat ({n} fold assignments, the same for every set; "
                "sd is the standard deviation of the paired differences over the repeats).\n\n"
                + paired,
            )
        )
    if notes:
        sections.append(("Notes", notes))
    return write_report(
        out, title, {task: res}, sections, figures=[fig], command=command, seed=seed
    )

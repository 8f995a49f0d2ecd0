"""``latentcube summarise``, ``change`` and ``similar``: what users do with an embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from latentcube.cli._app import app, fail

Emb = Annotated[Path, typer.Argument(help="An embedding store written by 'latentcube embed'.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output Zarr store.")]
Overwrite = Annotated[
    bool, typer.Option(help="Replace an existing output (swapped in only once complete).")
]
Png = Annotated[Path | None, typer.Option(help="Also draw the map as this PNG.")]


@app.command()
def summarise(
    emb: Emb,
    out: Out,
    window: Annotated[
        list[str] | None,
        typer.Option(help="START/END dates, both inclusive (repeatable); default all dates."),
    ] = None,
    every: Annotated[
        str | None, typer.Option(help="Cut each window into steps: '1Y', '3M', '10D', ...")
    ] = None,
    length: Annotated[
        str | None, typer.Option(help="Window length when it differs from --every (rolling).")
    ] = None,
    stat: Annotated[
        Literal["mean", "median", "std", "quantiles"], typer.Option(help="The statistic.")
    ] = "mean",
    quantiles: Annotated[str, typer.Option(help="--stat quantiles: e.g. 0.1,0.5,0.9.")] = (
        "0.1,0.5,0.9"
    ),
    weight: Annotated[
        Literal["none", "quality"],
        typer.Option(help="'quality': weight dates by 1 / reconstruction error."),
    ] = "none",
    months: Annotated[
        str | None, typer.Option(help="Keep only these calendar months, e.g. 6,7,8.")
    ] = None,
    png: Png = None,
    overwrite: Overwrite = False,
) -> None:
    """One vector per pixel per window: a statistic of the valid dates, with their count.

    Comparable to an annual embedding product when the window is a year, but any
    window works: July to July, a growing season, a fire season, or a regular
    sequence of windows with --every.
    Example: latentcube summarise emb.zarr --window 2019-07-01/2020-06-30 -o s.zarr
    """
    from latentcube.analysis.runs import summarise_store

    qs = tuple(float(q) for q in quantiles.split(","))
    path = summarise_store(
        emb, out, window=window or None, every=every, length=length, stat=stat, quantiles=qs,
        weight=None if weight == "none" else weight, months=_months(months), png=png,
        overwrite=overwrite,
    )  # fmt: skip
    typer.echo(f"wrote {path}")


def _months(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(m) for m in text.split(",")]
    except ValueError:
        fail(f"--months takes comma-separated month numbers, got {text!r}")


@app.command()
def change(
    emb: Emb,
    out: Out,
    before: Annotated[
        str | None, typer.Option(help="First period START/END (with --after).")
    ] = None,
    after: Annotated[str | None, typer.Option(help="Second period START/END.")] = None,
    anomaly: Annotated[
        bool,
        typer.Option(help="Per date: distance from the pixel's season in the other years."),
    ] = False,
    half_window: Annotated[
        float, typer.Option(help="--anomaly: days around the same day of year.")
    ] = 30.0,
    png: Png = None,
    overwrite: Overwrite = False,
) -> None:
    """A change map between two periods, or per-date anomalies against other years.

    Between periods: the distance (Euclidean and cosine) between each pixel's
    summaries of the two periods, with the count of valid dates of each.
    --anomaly: for every pixel-date, the distance of its embedding from the mean of
    the same pixel around the same day of year in the other years of the series.
    Example: latentcube change emb.zarr --before 2016-01-01/2017-12-31
    --after 2019-01-01/2020-12-31 -o change.zarr --png change.png
    """
    from latentcube.analysis.runs import anomaly_store, change_store

    if anomaly:
        path = anomaly_store(emb, out, half_window=half_window, overwrite=overwrite)
    elif before is None or after is None:
        fail("give --before and --after periods, or --anomaly")
    else:
        path = change_store(emb, out, before, after, png=png, overwrite=overwrite)
    typer.echo(f"wrote {path}" + (f" and {png}" if png is not None and not anomaly else ""))


def _point(text: str) -> tuple[Any, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        xy = (float(parts[0]), float(parts[1]))
    except (ValueError, IndexError):
        fail(f"--point takes X,Y[,DATE] in the store's CRS, got {text!r}")
    return (*xy, parts[2]) if len(parts) > 2 else xy


@app.command()
def similar(
    emb: Emb,
    out: Out,
    point: Annotated[
        list[str],
        typer.Option(help="An example pixel X,Y[,DATE] in the store's CRS (repeatable)."),
    ],
    png: Png = None,
    overwrite: Overwrite = False,
) -> None:
    """Similarity of every pixel-date to example pixels: cosine and whitened distance.

    The reference is the mean of the examples' vectors (at DATE, or over their
    valid dates). Example: latentcube similar emb.zarr --point 552010,5637990 -o s.zarr
    """
    from latentcube.analysis.runs import similar_store

    path = similar_store(emb, out, [_point(p) for p in point], png=png, overwrite=overwrite)
    typer.echo(f"wrote {path}" + (f" and {png}" if png is not None else ""))

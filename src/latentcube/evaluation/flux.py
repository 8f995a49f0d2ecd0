"""Eddy-covariance flux readers: daily GPP targets and a site registry.

Three formats are read into one shape, a daily :class:`pandas.DataFrame`
indexed by calendar day (``DatetimeIndex`` named ``date``) with a ``GPP``
column in gC m-2 d-1:

``FLUXNET2015`` / ICOS "Warm Winter 2020" ``FULLSET_DD`` files
    ``GPP_NT_VUT_REF`` (already gC m-2 d-1), days whose ``NEE_VUT_REF_QC``
    (the fraction of measured or good-quality gap-filled half-hours) is below a
    threshold are set to NaN, ``-9999`` is missing (:func:`read_fluxnet_daily`).
ICOS half-hourly files like the SE-Htm sample
    ``GPP_PI_1_1_1`` in umol CO2 m-2 s-1 per half-hour, stamped at the **end**
    of each interval in local standard time; converted to daily means in
    gC m-2 d-1, days with too few valid half-hours are NaN
    (:func:`read_icos_halfhourly`).
The monthly CARDAMOM-FluxVal FLUXNET2015 table
    monthly mean GPP/NEE/ET per site (:func:`read_fluxnet_monthly`), with its
    site list (IGBP class, coordinates) as the registry
    (:func:`site_registry`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from latentcube.errors import EvaluationError

__all__ = [
    "GC_PER_UMOL_CO2_S_TO_DAY",
    "FluxSite",
    "read_carbonfluxbench",
    "read_flux",
    "read_fluxnet_daily",
    "read_fluxnet_monthly",
    "read_icos_halfhourly",
    "site_registry",
]

#: umol CO2 m-2 s-1 -> gC m-2 d-1: 12.011 g mol-1 * 1e-6 mol umol-1 * 86400 s d-1.
GC_PER_UMOL_CO2_S_TO_DAY = 12.011e-6 * 86400.0
MISSING = -9999.0

#: Sites of the sample data that are not in the FLUXNET2015 monthly table.
_EXTRA_SITES = {
    # ICOS SE-Htm (Hyltemossa), coordinates as documented with the sample data.
    "SE-Htm": ("ENF", 56.10, 13.42),
}


@dataclass(frozen=True)
class FluxSite:
    """An eddy-covariance site: FLUXNET code, IGBP class and tower coordinates (WGS 84)."""

    site: str
    igbp: str
    lat: float
    lon: float


#: Daily GPP above this (gC m-2 d-1) is not a land ecosystem's: the most productive
#: crops and forests peak near 20-30 gC m-2 d-1.
GPP_MAX = 60.0


def _check_units(gpp: pd.Series, source: str) -> None:
    """Refuse daily GPP whose magnitude shows other units (e.g. mgC, or x1000 scaling)."""
    values = gpp.to_numpy(float)
    values = values[np.isfinite(values)]
    if values.size and float(np.quantile(values, 0.99)) > GPP_MAX:
        raise EvaluationError(
            f"{source}: daily GPP up to {values.max():.4g} (99th percentile "
            f"{np.quantile(values, 0.99):.4g}) is not in gC m-2 d-1 (expected below "
            f"{GPP_MAX:g}); check the column and its units"
        )


def _daily_frame(gpp: pd.Series, site: str, source: str, **extra: pd.Series) -> pd.DataFrame:
    _check_units(gpp, source)
    df = pd.DataFrame({"GPP": gpp.astype("float64"), **extra})
    df.index = pd.DatetimeIndex(df.index).normalize()
    df.index.name = "date"
    df.attrs.update(site=site, source=source, units="gC m-2 d-1")
    return df


def read_fluxnet_daily(
    path: str | os.PathLike[str],
    *,
    gpp: str = "GPP_NT_VUT_REF",
    qc: str | None = "NEE_VUT_REF_QC",
    min_qc: float = 0.7,
    site: str | None = None,
) -> pd.DataFrame:
    """Read a FLUXNET2015 / ICOS ``FULLSET_DD`` daily file.

    Parameters
    ----------
    path
        ``FLX_<SITE>_FLUXNET2015_FULLSET_DD_<years>_<version>.csv``.
    gpp
        GPP column (gC m-2 d-1); the paper uses ``GPP_NT_VUT_REF``.
    qc
        Quality column: the daily fraction (0-1) of measured or good-quality
        gap-filled half-hours; ``None`` keeps every day.
    min_qc
        Days with ``qc < min_qc`` (or a missing QC) become NaN; 0 keeps all.
    site
        Site code; default parsed from the file name.

    Returns
    -------
    pandas.DataFrame
        Daily ``GPP`` (NaN = missing or filtered) and ``QC``; ``attrs`` name the
        site and source.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FLUXNET daily file not found: {path}")
    head = pd.read_csv(path, nrows=0)
    need = ["TIMESTAMP", gpp] + ([qc] if qc else [])
    missing = [c for c in need if c not in head.columns]
    if missing:
        raise EvaluationError(
            f"{path.name} lacks column(s) {missing}; is it a FULLSET_DD file? "
            f"(has {list(head.columns)[:8]}...)"
        )
    df = pd.read_csv(path, usecols=need, na_values=[MISSING, str(int(MISSING))])
    try:
        t = pd.to_datetime(df["TIMESTAMP"].astype("int64").astype(str), format="%Y%m%d")
    except (ValueError, TypeError) as err:
        raise EvaluationError(
            f"{path.name}: TIMESTAMP is not YYYYMMDD (daily file?): {err}"
        ) from err
    values = pd.Series(df[gpp].to_numpy(float), index=t)
    extra: dict[str, pd.Series] = {}
    if qc:
        q = pd.Series(df[qc].to_numpy(float), index=t)
        if np.nanmax(q.to_numpy(), initial=0.0) > 1.0 + 1e-9:
            raise EvaluationError(
                f"{path.name}: {qc} exceeds 1; expected a daily fraction in [0, 1]"
            )
        values = values.where(q >= min_qc)
        extra["QC"] = q
    if site is None:
        m = re.match(r"FLX_([A-Za-z]{2}-[A-Za-z0-9]{3})_", path.name)
        site = m.group(1) if m else path.stem
    if values.index.has_duplicates:
        raise EvaluationError(f"{path.name}: duplicate days in TIMESTAMP")
    return _daily_frame(values, site, f"{path.name}:{gpp}", **extra)


def _read_icos_file(path: Path, gpp: str) -> pd.Series:
    try:
        df = pd.read_csv(path, skiprows=[1], na_values=[MISSING], encoding="latin-1")
    except pd.errors.ParserError as err:
        raise EvaluationError(f"{path.name}: not a readable ICOS half-hourly CSV: {err}") from err
    for c in ("date", "time", gpp):
        if c not in df.columns:
            raise EvaluationError(f"{path.name} lacks column {c!r} (has {list(df.columns)[:6]}...)")
    stamp = df["date"].astype(str) + " " + df["time"].astype(str).str.slice(0, 5)
    try:
        end = pd.to_datetime(stamp, format="%d/%m/%Y %H:%M")
    except ValueError as err:
        raise EvaluationError(f"{path.name}: date/time not dd/mm/yyyy hh:mm: {err}") from err
    start = end - pd.Timedelta("30min")  # stamps mark the END of each half-hour
    return pd.Series(df[gpp].to_numpy(float), index=pd.DatetimeIndex(start))


def read_icos_halfhourly(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    gpp: str = "GPP_PI_1_1_1",
    min_valid_fraction: float = 0.8,
    site: str | None = None,
) -> pd.DataFrame:
    """Read ICOS half-hourly files (e.g. SE-Htm) as daily GPP in gC m-2 d-1.

    Each row's timestamp marks the end of its half-hour, so ``00:30`` is the
    first interval of a day and ``00:00`` the last interval of the day before;
    intervals are assigned to the day they start in. Files of consecutive years
    are concatenated (the boundary row ``01/01/Y+1 00:00`` belongs to year Y).

    Parameters
    ----------
    paths
        One file, a glob pattern, or several files.
    gpp
        GPP column in umol CO2 m-2 s-1.
    min_valid_fraction
        Days with a smaller share of the 48 half-hours valid are NaN.
    site
        Site code; default the file-name prefix before ``_``.

    Returns
    -------
    pandas.DataFrame
        Daily ``GPP`` (mean flux x 12.011e-6 x 86400) and ``n_valid`` (valid
        half-hours of the day).
    """
    if isinstance(paths, str | os.PathLike):
        s = str(paths)
        files = sorted(glob.glob(s)) if any(ch in s for ch in "*?[") else [s]
    else:
        files = [str(p) for p in paths]
    if not files:
        raise FileNotFoundError(f"no ICOS half-hourly file matches {paths!r}")
    parts = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"ICOS half-hourly file not found: {p}")
        parts.append(_read_icos_file(p, gpp))
    hh = pd.concat(parts).sort_index()
    if hh.index.has_duplicates:
        dup = hh.index[hh.index.duplicated()][0]
        raise EvaluationError(f"half-hour starting {dup} appears in more than one row/file")
    n_valid = hh.notna().resample("D").sum()
    n_slots = hh.resample("D").size()
    mean = hh.resample("D").mean()
    ok = (n_valid >= min_valid_fraction * 48) & (n_slots > 0)
    daily = (mean * GC_PER_UMOL_CO2_S_TO_DAY).where(ok)
    site = site or Path(files[0]).name.split("_")[0]
    return _daily_frame(daily, site, f"{Path(files[0]).name}..:{gpp}", n_valid=n_valid)


def read_fluxnet_monthly(
    folder: str | os.PathLike[str], sites: Iterable[str] | None = None
) -> pd.DataFrame:
    """Read the CARDAMOM-FluxVal monthly FLUXNET2015 table.

    Parameters
    ----------
    folder
        Folder of ``validation_<SITE>.csv`` files.
    sites
        Sites to read (default all).

    Returns
    -------
    pandas.DataFrame
        Long table: ``site``, ``month`` (first day), ``GPP``, ``NEE`` (gC m-2 d-1,
        monthly means) and ``ET`` (mm d-1).
    """
    folder = Path(folder)
    files = sorted(folder.glob("validation_*.csv"))
    if not files:
        raise FileNotFoundError(f"no validation_<SITE>.csv in {folder}")
    want = set(sites) if sites is not None else None
    out = []
    for f in files:
        code = f.stem.removeprefix("validation_")
        if want is not None and code not in want:
            continue
        df = pd.read_csv(f)
        if not {"Date", "GPP"} <= set(df.columns):
            raise EvaluationError(f"{f.name}: expected columns ID,Date,GPP,NEE,ET")
        df["month"] = pd.to_datetime(df["Date"].astype(str), format="%Y%m")
        df["site"] = code
        out.append(df[["site", "month", "GPP", "NEE", "ET"]])
    if want is not None and (unknown := want - {d["site"].iat[0] for d in out if len(d)}):
        raise EvaluationError(f"sites not in {folder}: {sorted(unknown)}")
    return pd.concat(out, ignore_index=True)


def site_registry(location_csv: str | os.PathLike[str] | None = None) -> dict[str, FluxSite]:
    """Sites with IGBP class and coordinates.

    Parameters
    ----------
    location_csv
        ``location_fluxnet.csv`` of the FLUXNET2015 monthly table (columns
        ``Flux_name,LC,Lat,lon``); without it only the built-in sites of the
        sample data (SE-Htm) are known.

    Returns
    -------
    dict
        Site code -> :class:`FluxSite`.
    """
    reg = {k: FluxSite(k, igbp, lat, lon) for k, (igbp, lat, lon) in _EXTRA_SITES.items()}
    if location_csv is not None:
        df = pd.read_csv(location_csv)
        if not {"Flux_name", "LC", "Lat", "lon"} <= set(df.columns):
            raise EvaluationError(f"{location_csv}: expected columns Flux_name,LC,Lat,lon")
        for r in df.itertuples(index=False):
            reg[str(r.Flux_name)] = FluxSite(
                str(r.Flux_name), str(r.LC), float(r.Lat), float(r.lon)
            )
    return reg


def read_flux(path: str | os.PathLike[str], **kwargs: object) -> pd.DataFrame:
    """Read daily GPP from a FULLSET_DD file, or ICOS half-hourly file(s)/folder/glob.

    The format is recognised from the header (``TIMESTAMP`` vs ``date,time``).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"no .csv flux file in {p}")
        return read_icos_halfhourly(files, **kwargs)  # type: ignore[arg-type]
    if any(ch in str(path) for ch in "*?["):
        return read_icos_halfhourly(str(path), **kwargs)  # type: ignore[arg-type]
    if not p.is_file():
        raise FileNotFoundError(f"flux file not found: {p}")
    cols = pd.read_csv(p, nrows=0, encoding="latin-1").columns
    if "TIMESTAMP" in cols:
        return read_fluxnet_daily(p, **kwargs)  # type: ignore[arg-type]
    if {"date", "time"} <= set(cols):
        return read_icos_halfhourly(p, **kwargs)  # type: ignore[arg-type]
    raise EvaluationError(f"{p.name}: neither a FULLSET_DD file nor an ICOS half-hourly file")


def read_carbonfluxbench(
    folder: str | os.PathLike[str], target: str = "GPP_NT_VUT_USTAR50"
) -> pd.DataFrame:
    """Published per-site CarbonFluxBench scores (R2, RMSE) of daily GPP models.

    Parameters
    ----------
    folder
        Folder of ``<model>_<split>_<featureset>[_ensemble].csv`` files.
    target
        Target variable to keep.

    Returns
    -------
    pandas.DataFrame
        One row per file and test site: ``file``, ``model``, ``split_type``,
        ``site``, ``IGBP``, ``R2``, ``RMSE`` (gC m-2 d-1).
    """
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no CarbonFluxBench .csv in {folder}")
    parts = []
    for f in files:
        df = pd.read_csv(f)
        if not {"site", "R2", "RMSE", "target"} <= set(df.columns):
            raise EvaluationError(f"{f.name}: not a CarbonFluxBench result table")
        df = df[df["target"] == target].assign(file=f.stem)
        parts.append(df[["file", "model", "split_type", "site", "IGBP", "R2", "RMSE"]])
    return pd.concat(parts, ignore_index=True)

"""Nadir BRDF-adjusted reflectance (NBAR) for Sentinel-2 through sen2nbar's pure functions.

sen2nbar (optional: ``pip install 'latentcube[nbar]'``) computes the c-factor
of Roy et al. (2008, 2016), ``BRDF(sun, nadir) / BRDF(sun, view)`` with MODIS
kernel coefficients per band, from the sun and view angle grids (5 km) of an S2
granule's metadata XML (``MTD_TL.xml``). Only its pure functions are used
(:func:`sen2nbar.metadata.angles_from_metadata`, :func:`sen2nbar.c_factor.c_factor`):
its cube-level helpers change global xarray options and search the catalog
again. The XML is fetched here (signed, with retries) and parsed from a local
file, so the only network access is the metadata file of each item.

sen2nbar has coefficients for B02-B08, B11 and B12; other bands (B8A) keep a
factor of 1.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentcube.errors import StacError

__all__ = ["METADATA_ASSETS", "c_factor_grid", "nbar_factor", "require_sen2nbar"]

#: Asset keys of the granule metadata XML (Planetary Computer, Earth Search).
METADATA_ASSETS: tuple[str, ...] = ("granule-metadata", "granule_metadata")


def require_sen2nbar() -> Any:
    """Import sen2nbar or raise a :class:`StacError` saying how to install it."""
    try:
        import sen2nbar.c_factor
        import sen2nbar.metadata
    except ImportError as err:
        raise StacError(
            "nbar=True needs the optional package sen2nbar: pip install 'latentcube[nbar]'"
        ) from err
    return sen2nbar


def _fetch(href: str, patch_url: Callable[[str], str] | None) -> Path:
    """A local path holding the XML at ``href`` (downloaded for URLs)."""
    if not href.startswith(("http://", "https://")):
        path = Path(href.removeprefix("file://"))
        if not path.exists():
            raise StacError(f"granule metadata {href} does not exist")
        return path
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    url = patch_url(href) if patch_url else href
    session = requests.Session()
    retry = Retry(total=5, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    resp = session.get(url, timeout=60)
    resp.raise_for_status()
    fd, name = tempfile.mkstemp(suffix=".xml", prefix="latentcube-mtd-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(resp.content)
    return Path(name)


_CACHE: dict[str, Any] = {}


def _c_factor_cached(href: str, patch_url: Callable[[str], str] | None) -> Any:
    """c-factor grid of ``href``, fetched once per process (keyed by the unsigned href)."""
    if href not in _CACHE:
        path = _fetch(href, patch_url)
        try:
            grid = c_factor_grid(path)
        finally:
            if path.name.startswith("latentcube-mtd-"):
                path.unlink(missing_ok=True)
        if len(_CACHE) > 512:
            _CACHE.clear()
        _CACHE[href] = grid
    return _CACHE[href]


def c_factor_grid(metadata: str | os.PathLike[str]) -> Any:
    """The c-factor per band on the 5 km angle grid of a granule.

    Parameters
    ----------
    metadata
        Local path of the granule metadata XML (``MTD_TL.xml``).

    Returns
    -------
    xarray.DataArray
        (band, y, x) in the granule's CRS (``attrs["crs"]``), NaN-free
        (extrapolated to the edges as sen2nbar does).
    """
    sen2nbar = require_sen2nbar()
    from sen2nbar.axioms import fiso
    from sen2nbar.utils import _extrapolate_c_factor

    angles = sen2nbar.metadata.angles_from_metadata(str(metadata))
    bands = list(fiso)
    sun_zenith = angles.sel(angle="Zenith", band="Sun")
    view_zenith = angles.sel(angle="Zenith", band=bands)
    rel_azimuth = angles.sel(angle="Azimuth", band="Sun") - angles.sel(angle="Azimuth", band=bands)
    c = sen2nbar.c_factor.c_factor(sun_zenith, view_zenith, rel_azimuth)
    c = _extrapolate_c_factor(c).transpose("band", "y", "x")
    c.attrs["crs"] = str(angles.attrs["epsg"])
    return c


def nbar_factor(
    href: str,
    geobox: Any,
    bands: Sequence[str],
    *,
    patch_url: Callable[[str], str] | None = None,
) -> np.ndarray:
    """Multiplicative NBAR factor of one S2 item on a grid.

    Parameters
    ----------
    href
        Granule metadata XML (local path or URL; URLs are signed with
        ``patch_url`` and fetched once per process).
    geobox
        Output grid (:class:`odc.geo.geobox.GeoBox`).
    bands
        Band order of the result; bands without coefficients get 1.

    Returns
    -------
    numpy.ndarray
        float32 (band, y, x), bilinear in the granule's angle grid.
    """
    import xarray as xr
    from pyproj import Transformer

    c = _c_factor_cached(href, patch_url)
    coords = geobox.coordinates
    xx, yy = np.meshgrid(coords["x"].values, coords["y"].values)
    tr = Transformer.from_crs(geobox.crs.to_wkt(), c.attrs["crs"], always_xy=True)
    gx, gy = tr.transform(xx, yy)
    out = np.ones((len(bands), *geobox.shape), np.float32)
    px = xr.DataArray(np.asarray(gx), dims=("y", "x"))
    py = xr.DataArray(np.asarray(gy), dims=("y", "x"))
    have = {str(b) for b in c["band"].values}
    for k, b in enumerate(bands):
        if b in have:
            vals = c.sel(band=b).interp(x=px, y=py, method="linear", kwargs={"fill_value": None})
            out[k] = vals.values.astype(np.float32)
    return out

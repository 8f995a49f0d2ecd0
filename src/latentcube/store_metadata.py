"""What an embedding store says about itself: provenance, geo-embeddings attributes, STAC.

Every embedding store carries, beside the CRS (CF ``spatial_ref`` and GeoZarr
``proj:``/``spatial:``, :mod:`latentcube.io`):

* provenance (:func:`model_attrs`, set by the inference engine): the model file's
  name and SHA-256, its format and kind, the sensors and bands it reads, the
  cube's source catalog and collections;
* the time axis (:func:`store_attrs`): ``dates`` and the ACDD
  ``time_coverage_start``/``time_coverage_end``;
* the attributes of the geo-embeddings Zarr convention (``geoemb:``, v1, a draft
  proposal), registered in ``zarr_conventions``. The proposal describes pixel and
  chip embeddings but has no field for embeddings that vary with time: ours are
  per date, one vector per pixel and date of the ``time`` coordinate, recorded
  outside the proposal's namespace as ``latentcube:temporal_type = "per-date"``
  and ``latentcube:time_dimension = "time"``;

and a STAC Item (projection and datacube extensions) is written beside it as
``<store>.stac-item.json`` (:func:`write_stac_item`), so that catalogs can index
it. The item is derived from the store alone (its coordinates and attributes), so
any complete store can be described again at any time.

This module imports numpy, xarray, pyproj and pystac only (no torch).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "GEOEMB_CONVENTION",
    "LINEAGE_KEYS",
    "STAC_SUFFIX",
    "describe",
    "is_embedding_store",
    "lineage_attrs",
    "model_attrs",
    "stac_item",
    "stac_item_path",
    "store_attrs",
    "write_stac_item",
]

#: The ``zarr_conventions`` entry of the geo-embeddings convention, v1 (a proposal).
GEOEMB_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/"
    "refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
#: Suffix of the STAC Item written beside a store (``emb.zarr`` -> ``emb.zarr.stac-item.json``).
STAC_SUFFIX = ".stac-item.json"
#: Provenance attributes a product derived from an embedding store (summary, change,
#: similarity) inherits from it.
LINEAGE_KEYS: tuple[str, ...] = (
    "model_id",
    "model_sha256",
    "model_format",
    "model_kind",
    "sensors",
    "bands",
    "source_catalog",
    "source_collections",
    "cube_source",
    "time_coverage_start",
    "time_coverage_end",
)
_ZARR_MEDIA_TYPE = "application/vnd+zarr"


def model_attrs(
    model_path: str | os.PathLike[str] | None,
    model_sha256: str | None,
    kind: str,
    fmt: str,
    bands: Mapping[str, Sequence[str]],
    cube_attrs: Mapping[str, Any],
) -> dict[str, Any]:
    """Provenance attributes of an embedding: the model and the data it read.

    Parameters
    ----------
    model_path
        The model file (None for a model that was never saved).
    model_sha256
        SHA-256 (hex) of that file's bytes.
    kind
        The bundle's kind (``autoencoder`` or ``fusion``).
    fmt
        The bundle's checkpoint format (``latentcube.autoencoder``, ``latentcube.fusion``).
    bands
        Sensor -> the band order the model reads, the reference sensor first.
    cube_attrs
        Attributes of the embedded cube (``catalog_url``, ``collections`` of a
        cube built from STAC).

    Returns
    -------
    dict
        ``model_id`` (``<folder>/<file>`` of the model, or ``unsaved``),
        ``model_sha256`` (empty when unsaved), ``model_format``, ``model_kind``,
        ``sensors`` (list), ``bands`` (sensor -> list), ``source_catalog`` and
        ``source_collections`` (empty unless the cube was built from STAC),
        ``cube_source`` (the cube's own ``source``).
    """
    if model_path is not None:
        p = Path(model_path)
        model_id = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    else:
        model_id = "unsaved"
    collections = cube_attrs.get("collections", "")
    if isinstance(collections, str) and collections.startswith("["):
        collections = ",".join(str(c) for c in json.loads(collections))
    return {
        "model_id": model_id,
        "model_sha256": model_sha256 or "",
        "model_format": fmt,
        "model_kind": kind,
        "sensors": [str(s) for s in bands],
        "bands": {str(s): [str(b) for b in bs] for s, bs in bands.items()},
        "source_catalog": str(cube_attrs.get("catalog_url", "")),
        "source_collections": str(collections or ""),
        "cube_source": str(cube_attrs.get("source", "")),
    }


def _dates(time: Any) -> list[str]:
    values = np.asarray(time).astype("datetime64[s]")
    whole = bool(np.all(values == values.astype("datetime64[D]")))
    return [str(v) for v in np.datetime_as_string(values, unit="D" if whole else "s")]


def _model_uri(sha256: str) -> str:
    """RFC 6920 ``ni:`` URI naming a file by its SHA-256 (``ni:///sha-256;<base64url>``)."""
    raw = base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode().rstrip("=")
    return f"ni:///sha-256;{raw}"


def store_attrs(ds: xr.Dataset, dtype: str) -> dict[str, Any]:
    """Attributes of an embedding store derived from the dataset being written.

    Parameters
    ----------
    ds
        The storable embedding dataset (``embedding`` (feature, time, y, x),
        provenance attributes of :func:`model_attrs` among its attributes).
    dtype
        The storage type of the embedding (``float32`` or ``float16``).

    Returns
    -------
    dict
        ``dates`` (ISO dates of the time axis), ``time_coverage_start``,
        ``time_coverage_end``, ``zarr_conventions`` (the ``geoemb:`` entry), the
        ``geoemb:`` attributes (``type``, ``dimensions``, ``model``,
        ``source_data``, ``data_type``, ``gsd``) and the per-date note
        (``latentcube:temporal_type``, ``latentcube:time_dimension``).
    """
    dates = _dates(ds["time"].values)
    sha = str(ds.attrs.get("model_sha256", ""))
    catalog = str(ds.attrs.get("source_catalog", ""))
    out: dict[str, Any] = {
        "dates": dates,
        "time_coverage_start": dates[0] if dates else "",
        "time_coverage_end": dates[-1] if dates else "",
        "zarr_conventions": [GEOEMB_CONVENTION],
        "geoemb:type": "pixel",
        "geoemb:dimensions": int(ds.sizes["feature"]),
        "geoemb:model": _model_uri(sha) if sha else "unsaved",
        "geoemb:source_data": catalog or str(ds.attrs.get("cube_source", "")),
        "geoemb:data_type": dtype,
        "latentcube:temporal_type": "per-date",
        "latentcube:time_dimension": "time",
    }
    if ds.rio.crs is not None and ds.sizes["x"] > 1:
        out["geoemb:gsd"] = float(abs(ds["x"].values[1] - ds["x"].values[0]))
    return out


def lineage_attrs(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The :data:`LINEAGE_KEYS` attributes of the store at ``source`` (those it has)."""
    try:
        doc = json.loads((Path(source) / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
    return {k: attrs[k] for k in LINEAGE_KEYS if k in attrs}


# --------------------------------------------------------------------------------------
# STAC


def stac_item_path(store: str | os.PathLike[str]) -> Path:
    """Where the STAC Item of ``store`` is written: ``<store>.stac-item.json`` beside it."""
    p = Path(store)
    return p.with_name(p.name + STAC_SUFFIX)


def _iso(date: str) -> str:
    return f"{date}T00:00:00Z" if len(date) == 10 else f"{date}Z"


def _footprint(ds: xr.Dataset) -> tuple[list[float], list[list[float]]]:
    """WGS84 bbox and polygon ring (corners of the grid's outer pixel edges)."""
    from pyproj import Transformer

    left, bottom, right, top = ds.rio.bounds(recalc=True)
    to_wgs84 = Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True)
    xs, ys = [left, right, right, left, left], [bottom, bottom, top, top, bottom]
    lon, lat = to_wgs84.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    bbox = [float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))]
    return bbox, ring


def _dimensions(ds: xr.Dataset, epsg: int | None, dates: list[str]) -> dict[str, Any]:
    t = ds.rio.transform(recalc=True)
    left, bottom, right, top = ds.rio.bounds(recalc=True)
    ref: Any = epsg if epsg is not None else ds.rio.crs.to_wkt()
    dims: dict[str, Any] = {
        "x": {"type": "spatial", "axis": "x", "extent": [left, right], "step": t.a},
        "y": {"type": "spatial", "axis": "y", "extent": [bottom, top], "step": t.e},
    }
    for d in ("x", "y"):
        dims[d]["reference_system"] = ref
    for name in ds.dims:
        name = str(name)
        if name in dims:
            continue
        if name == "time":
            dims[name] = {
                "type": "temporal",
                "extent": [_iso(dates[0]), _iso(dates[-1])],
                "values": [_iso(d) for d in dates],
            }
            continue
        entry: dict[str, Any] = {"type": "embedding" if name == "feature" else "other"}
        if name in ds.coords:
            vals = ds[name].values
            entry["values"] = [v.item() if hasattr(v, "item") else str(v) for v in vals]
            if vals.dtype.kind not in "iuf":
                entry["values"] = [str(v) for v in vals]
        else:
            entry["extent"] = [0, int(ds.sizes[name]) - 1]
        dims[name] = entry
    return dims


def _variables(ds: xr.Dataset) -> dict[str, Any]:
    auxiliary = set(str(ds.attrs.get("quality_layers", "")).split(","))
    out = {}
    for name, var in ds.data_vars.items():
        v: dict[str, Any] = {
            "dimensions": [str(d) for d in var.dims],
            "type": "auxiliary" if name in auxiliary else "data",
        }
        if "long_name" in var.attrs:
            v["description"] = str(var.attrs["long_name"])
        if "units" in var.attrs:
            v["unit"] = str(var.attrs["units"])
        out[str(name)] = v
    return out


def stac_item(store: str | os.PathLike[str]) -> dict[str, Any]:
    """A STAC Item (projection and datacube extensions) describing a latentcube store.

    Parameters
    ----------
    store
        A Zarr store written by latentcube with a CRS and ``y``/``x``
        coordinates: an embedding store or a product derived from one.

    Returns
    -------
    dict
        The Item as JSON: ``bbox``/``geometry`` in WGS84 (the corners of the
        grid's outer pixel edges), ``start_datetime``/``end_datetime`` from the
        dates, ``proj:code`` (or ``proj:wkt2``), ``proj:shape``, ``proj:transform``,
        ``proj:bbox``, ``cube:dimensions``, ``cube:variables``, the provenance as
        ``latentcube:*`` properties and one asset, ``data``, whose href is the
        store relative to the Item (``./<store name>``).
    """
    import pystac
    from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
    from pystac.extensions.projection import ProjectionExtension

    from latentcube.io import open_zarr

    path = Path(store)
    ds = open_zarr(path)
    crs = ds.rio.crs
    if crs is None:
        from latentcube.errors import OutputError

        raise OutputError(f"{path} has no CRS; a STAC Item needs one")
    attrs = ds.attrs
    dates = list(attrs.get("dates") or ([] if "time" not in ds.coords else _dates(ds["time"])))
    if not dates and attrs.get("time_coverage_start"):
        dates = [str(attrs["time_coverage_start"]), str(attrs["time_coverage_end"])]
    bbox, ring = _footprint(ds)
    start = end = None
    if dates:
        start = _dt.datetime.fromisoformat(_iso(dates[0]))
        end = _dt.datetime.fromisoformat(_iso(dates[-1]))
    created = attrs.get("created")
    props: dict[str, Any] = {"created": str(created)} if created else {}
    for key in ("model_id", "model_sha256", "model_kind", "sensors", "bands"):
        if attrs.get(key):
            props[f"latentcube:{key}"] = attrs[key]
    props["latentcube:version"] = str(attrs.get("latentcube_version", ""))
    if "latentcube:temporal_type" in attrs:
        props["latentcube:temporal_type"] = attrs["latentcube:temporal_type"]
    if "geoemb:gsd" in attrs:
        props["gsd"] = attrs["geoemb:gsd"]
    name = path.name
    item_id = name[: -len(path.suffix)] if path.suffix else name
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Polygon", "coordinates": [ring]},
        bbox=bbox,
        datetime=None if start else _dt.datetime.now(_dt.UTC),
        properties=props,
        start_datetime=start,
        end_datetime=end,
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [int(ds.sizes["y"]), int(ds.sizes["x"])]
    proj.transform = [float(v) for v in tuple(ds.rio.transform(recalc=True))[:6]]
    proj.bbox = [float(v) for v in ds.rio.bounds(recalc=True)]
    cube = DatacubeExtension.ext(item, add_if_missing=True)
    cube.apply(
        dimensions={k: Dimension.from_dict(v) for k, v in _dimensions(ds, epsg, dates).items()},
        variables={k: Variable.from_dict(v) for k, v in _variables(ds).items()},
    )
    media = "application/zip" if path.suffix == ".zip" else _ZARR_MEDIA_TYPE
    item.add_asset(
        "data",
        pystac.Asset(href=f"./{name}", media_type=media, roles=["data"], title=str(name)),
    )
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def write_stac_item(store: str | os.PathLike[str]) -> Path | None:
    """Write :func:`stac_item` of ``store`` beside it (:func:`stac_item_path`), atomically.

    The file is written under a temporary name and renamed, so a reader never
    sees half an Item. It lies outside the store, so the store's own metadata
    (and its completeness) is untouched. A store without a CRS gets no Item.

    Returns
    -------
    pathlib.Path or None
        The Item's path (None without a CRS).
    """
    from latentcube.io import open_zarr

    target = stac_item_path(store)
    if open_zarr(store).rio.crs is None:
        return None
    doc = json.dumps(stac_item(store), indent=1)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(doc + "\n")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def is_embedding_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an embedding store (finished or not), not a cube or other file."""
    from latentcube.embedding_store import VARIABLE, store_status

    status, _ = store_status(path)
    if status in ("unfinished", "legacy"):
        return True
    if status != "complete":
        return False
    if Path(path).is_dir():
        return True
    from latentcube.io import open_zarr

    try:  # a zipped store: an embedding store or a zipped cube
        return VARIABLE in open_zarr(path, chunks=None)
    except Exception:
        return False


def describe(store: str | os.PathLike[str]) -> list[str]:
    """Lines describing an embedding store's provenance (``latentcube info EMB``).

    Stores of earlier versions without these attributes show what they have.
    """
    from latentcube.embedding_store import describe_store, open_embedding

    ds = open_embedding(store)
    attrs = ds.attrs
    dates = attrs.get("dates") or []
    lines = [f"embedding store: {describe_store(store)}"]
    lines.append(
        f"model: {attrs.get('model_id', 'unknown')} ({attrs.get('model_kind', '?')}, "
        f"sha256 {attrs.get('model_sha256') or 'unknown'})"
    )
    bands = attrs.get("bands") or {}
    if isinstance(bands, Mapping) and bands:
        lines.append(
            "sensors: " + "; ".join(f"{s} ({', '.join(map(str, b))})" for s, b in bands.items())
        )
    else:
        lines.append(f"sensors: {attrs.get('sensor', 'unknown')}")
    if dates:
        lines.append(f"dates: {len(dates)}, {dates[0]} to {dates[-1]} (one embedding per date)")
    source = attrs.get("source_catalog") or attrs.get("cube_source") or attrs.get("source", "")
    lines.append(f"source: {source}")
    lines.append(f"written by: latentcube {attrs.get('latentcube_version', 'unknown')}, "
                 f"{attrs.get('created', '')}")  # fmt: skip
    if "geoemb:type" in attrs:
        lines.append(
            f"geoemb: {attrs['geoemb:type']}, {attrs.get('geoemb:dimensions')} dims, "
            f"{attrs.get('geoemb:data_type')}, {attrs.get('latentcube:temporal_type', '')}"
        )
    codecs = ds["embedding"].encoding.get("compressors") or ()
    names = [str(c.to_dict().get("name", c)) if hasattr(c, "to_dict") else str(c) for c in codecs]
    lines.append(f"compression: {', '.join(names) or 'none'}")
    item = stac_item_path(store)
    lines.append(f"STAC item: {item if item.is_file() else 'none'}")
    return lines

"""The learned cloud and cloud-shadow mask: ukis-csmask's CNNs, run per date on the cube's grid.

ukis-csmask (DLR; Wieland et al. 2019, RSE 230; Wieland et al. 2022, ISPRS
Archives XLIII-B3) ships U-Nets (EfficientNet-B4 encoder) as ONNX files that
label each pixel of a Sentinel-2 L2A image clear (0), cloud (1) or cloud shadow
(2). Two models for L2A: four bands (B02, B03, B04, B08) and six (also B11,
B12); the six-band one is the better one (the package's own advice). They were
trained on images at about 30 m and take fixed 256 x 256 px tiles, normalised
with the training set's band means and standard deviations (shipped beside the
models).

:class:`CSMask` uses only the package's model files and their statistics; its
own code does the rest, so that it fits a cube build (:mod:`latentcube.cube.build`):

* the model's bands are averaged over ``scale`` x ``scale`` cube pixels (3: 30 m
  on the 10 m grid, the models' resolution), NaN-aware; pixels without data
  are given the band mean (0 after normalisation);
* the image is cut into 256 px tiles overlapping by 32 px (one tile up to
  768 x 768 cube pixels), padded by mirroring when smaller, and the tiles of
  a unit's dates go through the network in batches of ``batch_size``; overlapping
  tiles are blended with weights that fall off towards the tile edges;
* the class of each model pixel is repeated back onto the cube pixels; clouds
  and shadows are grown by ``dilation`` cube pixels (as :class:`SCLMask` does).

In a build the mask is called per loading unit (the same units, and Dask tasks,
as the rest of the build: memory is bounded by a unit), with a halo of
``context`` pixels of real imagery around the unit so the network sees what lies
beyond the unit's edge. Items of one solar day (tiles of one pass) are
mosaicked and classified once (:meth:`CSMask.by_date`).

The network does not know snow: SCL's snow class (11) is clear for it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from latentcube.cube.masks import SCLMask, dilate_square
from latentcube.errors import CubeError

__all__ = [
    "CLASSES",
    "INSTALL_HINT",
    "MODEL_BANDS",
    "NODATA",
    "CSMask",
    "require_csmask",
]

#: The install command named by every "missing extra" error.
INSTALL_HINT = "pip install 'latentcube[cloudmask]'"
#: The cube bands each model reads, in the model's order (ukis names: blue, green,
#: red, nir, swir16, swir22).
MODEL_BANDS: dict[int, tuple[str, ...]] = {
    4: ("B02", "B03", "B04", "B08"),
    6: ("B02", "B03", "B04", "B08", "B11", "B12"),
}
_UKIS_NAMES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir",
               "B11": "swir16", "B12": "swir22"}  # fmt: skip
#: Classes of :meth:`CSMask.classify`.
CLASSES = {0: "clear", 1: "cloud", 2: "cloud shadow"}
#: Class of pixels without data in some model band.
NODATA = 255
#: Overlap of neighbouring model tiles (model pixels).
OVERLAP = 32


def require_csmask() -> Path:
    """The folder of ukis-csmask's model files; a :class:`CubeError` naming the extra if missing.

    Both ukis-csmask (the model files) and onnxruntime (which runs them) must be
    importable. Nothing is imported here: ukis-csmask's own modules are not used.
    """
    missing = [m for m in ("ukis_csmask", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        names = " and ".join(m.replace("_", "-") for m in missing)
        raise CubeError(f"the learned cloud mask needs {names}, not installed: {INSTALL_HINT}")
    spec = importlib.util.find_spec("ukis_csmask")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a model file (cached per path, size and modification time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of ``path``, computed once per process while the file is unchanged."""
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.cache
def _session(path: str, threads: int) -> Any:
    """One onnxruntime session per model file and thread count, per process (and Dask worker)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # no busy-waiting between calls: on a shared machine 2 spinning threads took 1.7x the
    # wall time of 1 thread; without spinning 0.95x (2 cores, load average 9)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


@functools.cache
def _model_stats(path: str, bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Band means and standard deviations, tile size and version of a model (its JSON)."""
    doc = json.loads(Path(path).with_suffix(".json").read_text())
    stats = doc["data"]["dataset_statistics"]
    want = [_UKIS_NAMES[b] for b in bands]
    if list(stats["band_names"]) != want:
        raise CubeError(
            f"{Path(path).name}: bands {stats['band_names']}, expected {want}; "
            f"this latentcube supports ukis-csmask 1.0: {INSTALL_HINT}"
        )
    mean = np.asarray(stats["img"][0], np.float32)[:, None, None]
    std = np.asarray(stats["img"][1], np.float32)[:, None, None]
    tile = int(doc["data"]["target_size"][0])
    return mean, std, tile, str(doc["model"].get("version", ""))


def _block_mean(x: np.ndarray, s: int) -> np.ndarray:
    """NaN-aware mean over ``s`` x ``s`` blocks of the last two axes (edge blocks: their pixels).

    Sums of the ``s * s`` strided views, added in row-major order (the same sums
    whatever the caller's layout); the NaN test and the zero-filled copy are made
    once, and only when some value is not finite.
    """
    if s == 1:
        return x
    h, w = x.shape[-2:]
    shape = (*x.shape[:-2], -(-h // s), -(-w // s))
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    ok = np.isfinite(x)
    finite = bool(ok.all())
    if not finite:
        x = np.where(ok, x, np.float32(0.0))
    for i in range(s):
        for j in range(s):
            part = x[..., i::s, j::s]
            region = (..., slice(0, part.shape[-2]), slice(0, part.shape[-1]))
            total[region] += part
            count[region] += 1.0 if finite else ok[..., i::s, j::s]
    with np.errstate(invalid="ignore", divide="ignore"):  # no pixel with data: 0 / 0 = NaN
        return np.divide(total, count, out=total)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering ``size`` (>= ``tile``) with at least ``overlap`` px of overlap."""
    if size <= tile:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _weights(tile: int, overlap: int) -> np.ndarray:
    """Blending weights of a tile: 1 inside, falling linearly to 1/(overlap+1) at the edges."""
    ramp = np.minimum(np.arange(1, tile + 1), np.arange(tile, 0, -1)) / (overlap + 1)
    w = np.minimum(ramp, 1.0).astype(np.float32)
    return w[:, None] * w[None, :]


def _model_input(
    planes: Sequence[np.ndarray], s: int, mean: np.ndarray, std: np.ndarray, ph: int, pw: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image's network input (band, y, x) and its pixels without data (y, x).

    Band by band (each plane stays in cache): the ``s`` x ``s`` block means,
    normalised with the model's statistics (no data: 0, the band mean), padded
    by mirroring to ``ph`` more rows and ``pw`` more columns.
    """
    h, w = planes[0].shape
    x = np.empty((len(planes), -(-h // s), -(-w // s)), np.float32)
    ok = np.ones((h, w), bool)
    for j, plane in enumerate(planes):
        ok &= np.isfinite(plane)
        np.divide(_block_mean(plane, s) - mean[j], std[j], out=x[j])
        np.copyto(x[j], np.float32(0.0), where=~np.isfinite(x[j]))  # no data: the band mean
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
    return x, ~ok


@dataclass(frozen=True)
class _Grid:
    """The model tiles of an image: tile size, scale, image size, padding and tile starts."""

    tile: int
    scale: int
    h: int
    w: int
    ph: int
    pw: int
    ys: list[int]
    xs: list[int]

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Blending weights of one tile, and their sum over the padded image."""
        weights = _weights(self.tile, OVERLAP)
        hs, ws = -(-self.h // self.scale), -(-self.w // self.scale)
        wsum = np.zeros((hs + self.ph, ws + self.pw), np.float32)
        for y0 in self.ys:
            for x0 in self.xs:
                wsum[y0 : y0 + self.tile, x0 : x0 + self.tile] += weights
        return weights, wsum


@dataclass(frozen=True)
class CSMask:
    """Learned clouds and shadows (ukis-csmask), a :class:`~latentcube.cube.masks.MaskFunction`.

    Parameters
    ----------
    bands
        6 (default): the six-band model (B02, B03, B04, B08, B11, B12); 4: the
        four-band model (B02, B03, B04, B08), for band sets without SWIR.
    dilation
        Grow clouds and shadows by this many cube pixels.
    scale
        Cube pixels per model pixel along each axis: the model runs on
        ``scale`` x ``scale`` block means (3: 30 m on a 10 m cube, the models'
        training resolution; 1: at the cube's resolution, 9x the cost).
    context
        Pixels of imagery read around each loading unit for the network.
    batch_size
        Tiles of 256 x 256 model pixels per network call. 1 by default: on the
        project's 2-core CPU batches of 4 were no faster per tile (95 against 90 ms
        of CPU) and raised onnxruntime's peak memory from about 250 to 400 MiB.
    threads
        onnxruntime's threads per call. 1 by default (Dask workers run one task
        per core; a serial build runs its writer and S1 threads beside it): on the
        project's 2 shared cores 2 threads were no faster and took more CPU time,
        alone and in builds (benchmarks/RESULTS.md). The classes do not depend on
        it (tested).
    calls
        Network calls run at the same time, each on its own images with
        ``threads`` threads (the session is shared). 2 by default: a unit's dates
        are classified on two threads, which uses the core a serial build's
        writer thread leaves idle while the mask runs, for the same CPU time
        (benchmarks/RESULTS.md). The classes do not depend on it (tested).

    Examples
    --------
    >>> cube = build_cube(..., mask=CSMask())  # doctest: +SKIP
    >>> cube = build_cube(..., mask="scl+csmask")  # doctest: +SKIP
    """

    bands: int = 6
    dilation: int = 1
    scale: int = 3
    context: int = 64
    batch_size: int = 1
    threads: int = 1
    calls: int = 2

    #: Items are independent: a combined mask may call it on a subset of items.
    per_item: ClassVar[bool] = True
    #: Wants reflectance above 1 as it is (bright clouds); a build clips after masking.
    unclipped: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.bands not in MODEL_BANDS:
            raise CubeError(f"csmask bands must be 4 or 6, got {self.bands}")
        for name in ("scale", "batch_size", "threads", "calls"):
            if int(getattr(self, name)) < 1:
                raise CubeError(f"csmask {name} must be >= 1, got {getattr(self, name)}")
        if self.dilation < 0 or self.context < 0:
            raise CubeError("csmask dilation and context must be >= 0")

    # ----------------------------------------------------------------- identity

    @property
    def name(self) -> str:
        """Short name: ``csmask``."""
        return "csmask"

    @property
    def halo(self) -> int:
        """Context read around a unit: ``context`` plus the dilation."""
        return int(self.context + self.dilation)

    @property
    def model_bands(self) -> tuple[str, ...]:
        """Cube bands the model reads, in its order."""
        return MODEL_BANDS[self.bands]

    @property
    def model_file(self) -> Path:
        """The ONNX file of the model (inside the installed ukis-csmask)."""
        return require_csmask() / f"model_{self.bands}b_l2a.onnx"

    @property
    def screen(self) -> SCLMask:
        """An SCL mask whose clear pixels include this mask's: only SCL no data (0) is masked.

        Lets a build drop dates without data before reading their bands.
        """
        return SCLMask(invalid_classes=(0,), dilation=0)

    def check(self, bands: Sequence[str]) -> None:
        """Raise a one-line :class:`CubeError` if the extra or a model band is missing."""
        missing = [b for b in self.model_bands if b not in bands]
        if missing:
            hint = " (or the 4-band model: --csmask-bands 4)" if self.bands == 6 else ""
            raise CubeError(
                f"the {self.bands}-band learned cloud mask needs S2 band(s) "
                f"{', '.join(missing)}, which the cube's bands ({', '.join(bands)}) lack; "
                f"add them{hint}"
            )
        if not self.model_file.exists():
            raise CubeError(f"ukis-csmask model file {self.model_file} is missing: {INSTALL_HINT}")

    def _stats(self) -> tuple[np.ndarray, np.ndarray, int, str]:
        return _model_stats(str(self.model_file), self.model_bands)

    def provenance(self) -> dict[str, Any]:
        """Name, package versions, model file and its SHA-256, options."""
        path = self.model_file
        return {
            "name": self.name,
            "package": "ukis-csmask",
            "package_version": _version("ukis-csmask"),
            "onnxruntime_version": _version("onnxruntime"),
            "model_file": path.name,
            "model_sha256": file_sha256(path),
            "model_version": self._stats()[3],
            "bands": list(self.model_bands),
            "classes": {str(k): v for k, v in CLASSES.items()},
            "scale": self.scale,
            "context": self.context,
            "dilation": self.dilation,
        }

    def describe(self) -> str:
        """One line for the build's identity (fingerprint) and the cube's ``mask_function``."""
        p = self.provenance()
        return (
            f"CSMask(model={p['model_file']}, sha256={p['model_sha256'][:16]}, "
            f"ukis-csmask={p['package_version']}, scale={self.scale}, context={self.context}, "
            f"dilation={self.dilation})"
        )

    # ----------------------------------------------------------------- inference

    def classify(self, refl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Class of every pixel of every image: 0 clear, 1 cloud, 2 shadow, 255 no data.

        Parameters
        ----------
        refl
            (image, band, y, x) float32 reflectance, NaN for no data; not clipped
            at 1 (a uniform image of bright clouds clipped at 1 looks clear to
            the network).
        bands
            Names of ``refl``'s bands; the model's bands are picked by name.

        Returns
        -------
        numpy.ndarray
            uint8 (image, y, x). No data: a pixel without data in some model band.
        """
        self.check(bands)
        idx = [list(bands).index(b) for b in self.model_bands]
        images = [[refl[k, j] for j in idx] for k in range(refl.shape[0])]
        return self._classes(images, refl.shape[-2:])

    def _classes(self, images: Sequence[Sequence[np.ndarray]], size: Sequence[int]) -> np.ndarray:
        """:meth:`classify` of images given as their model bands' (y, x) planes, in model order.

        Planes may be views into a larger array: nothing is copied but each image's
        model input, made and classified a batch at a time (memory: one batch per call).
        """
        tile = self._stats()[2]
        h, w = (int(v) for v in size)
        out = np.full((len(images), h, w), NODATA, np.uint8)
        s = int(self.scale)
        hs, ws = -(-h // s), -(-w // s)  # model grid
        ph, pw = max(tile - hs, 0), max(tile - ws, 0)
        ys, xs = _starts(hs + ph, tile, OVERLAP), _starts(ws + pw, tile, OVERLAP)
        grid = _Grid(tile, s, h, w, ph, pw, ys, xs)
        per_batch = max(1, self.batch_size // (len(ys) * len(xs)))
        calls = min(int(self.calls), len(images))
        if calls > 1:  # the images in turn to ``calls`` threads, each its own batches
            from concurrent.futures import ThreadPoolExecutor

            # the one session, made here: threads that found none would each make one
            _session(str(self.model_file), int(self.threads))

            with ThreadPoolExecutor(calls, thread_name_prefix="latentcube-csmask") as pool:
                done = [
                    pool.submit(self._batches, images[i::calls], range(i, len(images), calls),
                                grid, out, per_batch)
                    for i in range(calls)
                ]  # fmt: skip
                for fut in done:
                    fut.result()
        else:
            self._batches(images, range(len(images)), grid, out, per_batch)
        return out

    def _batches(
        self,
        images: Sequence[Sequence[np.ndarray]],
        index: Sequence[int],
        grid: _Grid,
        out: np.ndarray,
        per_batch: int,
    ) -> None:
        """Classify ``images`` (rows ``index`` of ``out``) ``per_batch`` images per call."""
        mean, std, _, _ = self._stats()
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # image, model input, no data
        for k, planes in zip(index, images, strict=True):
            x, nodata = _model_input(planes, grid.scale, mean, std, grid.ph, grid.pw)
            if nodata.all():  # an image without any data: no run
                continue
            pending.append((k, x, nodata))
            if len(pending) == per_batch:
                self._run(pending, grid, out)
                pending = []
        if pending:
            self._run(pending, grid, out)

    def _run(
        self, pending: Sequence[tuple[int, np.ndarray, np.ndarray]], grid: _Grid, out: np.ndarray
    ) -> None:
        """Classify prepared images (their tiles in batches of ``batch_size``) into ``out``."""
        session = _session(str(self.model_file), int(self.threads))
        name = session.get_inputs()[0].name
        tile, s = grid.tile, grid.scale
        weights, wsum = grid.weights()
        tiles = [(k, y0, x0) for k in range(len(pending)) for y0 in grid.ys for x0 in grid.xs]
        prob = np.zeros((len(pending), 3, *wsum.shape), np.float32)
        for b0 in range(0, len(tiles), self.batch_size):
            part = tiles[b0 : b0 + self.batch_size]
            batch = [pending[k][1][:, y0 : y0 + tile, x0 : x0 + tile] for k, y0, x0 in part]
            logits = session.run(None, {name: np.ascontiguousarray(np.stack(batch), np.float32)})[0]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True) * weights
            for (k, y0, x0), pk in zip(part, p, strict=True):
                prob[k, :, y0 : y0 + tile, x0 : x0 + tile] += pk
        cls = np.argmax(prob / wsum, axis=1).astype(np.uint8)
        hs, ws = -(-grid.h // s), -(-grid.w // s)
        cls = cls[:, grid.ph // 2 : grid.ph // 2 + hs, grid.pw // 2 : grid.pw // 2 + ws]
        if s > 1:
            cls = np.repeat(np.repeat(cls, s, axis=1), s, axis=2)
        for (k, _, nodata), c in zip(pending, cls, strict=True):
            out[k] = c[: grid.h, : grid.w]
            out[k][nodata] = NODATA

    def clear_from_classes(self, classes: np.ndarray) -> np.ndarray:
        """Clear pixels of :meth:`classify`'s output: class 0, away from dilated clouds/shadows."""
        clear = classes == 0
        if self.dilation > 0:
            clear &= ~dilate_square((classes == 1) | (classes == 2), int(self.dilation))
        return clear

    def __call__(self, refl: np.ndarray, scl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Clear pixels (item, y, x): each item classified on its own."""
        return self.clear_from_classes(self.classify(refl, bands))

    def by_date(
        self,
        refl: np.ndarray,
        scl: np.ndarray,
        bands: Sequence[str],
        groups: Sequence[Sequence[int]],
        need: np.ndarray | None = None,
    ) -> np.ndarray:
        """Clear pixels (item, y, x), the items of each date classified once, as one mosaic.

        Items of one solar day are tiles of one pass: the same clouds. Each date's
        items are mosaicked (the first item with data wins) and classified once;
        every item of the date gets that date's mask. ``need`` (item, y, x): only
        dates with some True pixel are classified (the others are all False), so
        a combined mask does not run the network where another mask left
        nothing clear.
        """
        self.check(bands)
        idx = [list(bands).index(b) for b in self.model_bands]
        clear = np.zeros((refl.shape[0], *refl.shape[2:]), bool)
        todo = [
            list(g) for g in groups
            if len(g) and (need is None or bool(need[list(g)].any()))
        ]  # fmt: skip
        if not todo:
            return clear
        images: list[Sequence[np.ndarray]] = []
        for g in todo:
            if len(g) == 1:  # the item's model bands, as views
                images.append([refl[g[0], j] for j in idx])
                continue
            mosaic = refl[g[0], idx]  # a copy, in the model's band order
            for k in g[1:]:  # fill the holes of the mosaic with this item's data
                item = refl[k, idx]
                take = np.isfinite(item).all(axis=0)
                take &= ~np.isfinite(mosaic).all(axis=0)
                mosaic[:, take] = item[:, take]
            images.append(list(mosaic))
        date_clear = self.clear_from_classes(self._classes(images, refl.shape[2:]))
        for d, g in enumerate(todo):
            clear[g] = date_clear[d]
        return clear

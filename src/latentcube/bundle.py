"""One model type on disk and in memory: :class:`ModelBundle`.

A bundle is a trained model (a stage-1 autoencoder of one sensor, or a fused
model over several sensors' autoencoders) with its configuration and metadata.
:meth:`ModelBundle.save` and :meth:`ModelBundle.load` read and write it whatever
its kind; the inference engine picks the job that embeds a bundle from
:attr:`ModelBundle.kind`, as xarray picks a backend.

A checkpoint is one ``.pt`` file holding only plain types (tensors, numbers,
strings, lists, dicts), so it loads with ``torch.load(weights_only=True)``;
its configuration is also written beside it as ``<name>.json`` for people and
other tools. Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from latentcube.errors import ModelError
from latentcube.models.autoencoder import ContextAutoencoder, build_autoencoder
from latentcube.models.config import AutoencoderConfig

if TYPE_CHECKING:
    from latentcube.models.fusion import FusionModel

# The public names: one model type and where the shipped one lives. The per-format
# functions below (save_checkpoint, load_checkpoint, save_fusion_checkpoint,
# load_fusion_checkpoint, load_any) are the implementation of ModelBundle.save/load,
# kept importable for scripts written against 0.1; new code uses ModelBundle.
__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FUSION_FORMAT",
    "ModelBundle",
    "default_model_path",
    "read_checkpoint",
]

FORMAT = "latentcube.autoencoder"
FORMAT_VERSION = 1


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_model_file(
    path: str | os.PathLike[str],
    fmt: str,
    fields: Mapping[str, Any],
    model: torch.nn.Module,
    extra: Mapping[str, Any] | None,
    training_state: Mapping[str, Any] | None,
) -> Path:
    """Write weights + metadata atomically, and the metadata as a ``.json`` sidecar.

    The metadata are the format header, ``fields``, ``extra`` (made JSON-safe) and the
    machine and package versions that wrote the file (``environment``, from
    :func:`latentcube.provenance.environment`): weights trained from one seed are
    bit-identical on one machine but not across CPUs.
    """
    from latentcube._version import __version__
    from latentcube.provenance import environment

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "latentcube_version": __version__,
        **fields,
        **json.loads(json.dumps(dict(extra or {}), default=str)),
    }
    meta.setdefault("environment", environment())
    payload = {
        "meta_json": json.dumps(meta),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training_state is not None:
        payload["training_state"] = dict(training_state)
    _atomic_save(payload, path)
    sidecar = path.with_suffix(".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, sidecar)
    return path


def save_checkpoint(
    path: str | os.PathLike[str],
    model: ContextAutoencoder,
    *,
    extra: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model checkpoint.

    Parameters
    ----------
    path
        Target ``.pt`` file.
    model
        The autoencoder; its ``config`` is stored as JSON.
    extra
        JSON-serialisable metadata: provenance, metrics, normalisation.
    training_state
        Optimiser/scheduler/RNG state for resuming (tensors and plain types).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    cfg = model.config
    fields = {
        "model_config": cfg.model_dump(mode="json"),
        "sensor": cfg.sensor,
        "bands": list(cfg.bands),
    }
    return _write_model_file(path, FORMAT, fields, model, extra, training_state)


def read_checkpoint(
    path: str | os.PathLike[str], formats: Sequence[str] = (FORMAT,)
) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``) and check its format.

    Parameters
    ----------
    path
        The ``.pt`` file.
    formats
        Formats accepted (default: stage-1 autoencoder checkpoints).

    Returns
    -------
    dict
        ``meta`` (dict), ``state_dict`` and, when present, ``training_state``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(err))
        if found is None:  # not a pickle of plain types, nor of objects: garbage
            raise ModelError(
                f"{path} is not a readable latentcube checkpoint (corrupt or truncated?)"
            ) from None
        # pickled code or objects: refused, never run (and never advise loading it anyway)
        raise ModelError(
            f"{path} holds pickled Python objects (it refers to {found.group(1)}), which "
            "latentcube never loads; it is not a latentcube checkpoint"
        ) from None
    except Exception as err:  # truncated zip, garbage bytes, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{path} is not a readable latentcube checkpoint (corrupt or truncated?): {first}"
        ) from None
    if not isinstance(payload, dict) or "meta_json" not in payload or "state_dict" not in payload:
        raise ModelError(f"{path} is a torch file but not a latentcube checkpoint")
    try:
        meta = json.loads(payload["meta_json"])
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: metadata is not valid JSON: {err}") from err
    if meta.get("format") not in formats:
        expected = " or ".join(repr(f) for f in formats)
        raise ModelError(f"{path}: format {meta.get('format')!r}, expected {expected}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format version {meta.get('format_version')} is not supported "
            f"by this latentcube (reads version {FORMAT_VERSION})"
        )
    return {"meta": meta, **{k: v for k, v in payload.items() if k != "meta_json"}}


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    expect_bands: Sequence[str] | None = None,
    sensor: str | None = None,
) -> tuple[ContextAutoencoder, dict[str, Any]]:
    """Load an autoencoder checkpoint, validated, in eval mode.

    Parameters
    ----------
    path
        A file written by :func:`save_checkpoint`.
    expect_bands
        Band order the caller will feed; a different band set or order raises.
    sensor
        Sensor the caller expects.

    Returns
    -------
    tuple
        The model and the checkpoint metadata.

    Raises
    ------
    ModelError
        For a missing, corrupt or foreign file, another format version, another
        sensor or band set, or weights that do not fit the configuration.
    """
    return _autoencoder_from(read_checkpoint(path), path, expect_bands, sensor)


def _autoencoder_from(
    ck: Mapping[str, Any],
    path: str | os.PathLike[str],
    expect_bands: Sequence[str] | None = None,
    sensor: str | None = None,
) -> tuple[ContextAutoencoder, dict[str, Any]]:
    """The autoencoder of a checkpoint already read by :func:`read_checkpoint`."""
    meta = ck["meta"]
    try:
        config = AutoencoderConfig.model_validate(meta["model_config"])
    except Exception as err:
        raise ModelError(f"{path}: invalid model configuration: {err}") from err
    if sensor is not None and config.sensor != sensor:
        raise ModelError(f"{path} is a {config.sensor!r} model, expected a {sensor!r} model")
    if expect_bands is not None and tuple(expect_bands) != config.bands:
        raise ModelError(
            f"{path} was trained on bands {list(config.bands)}, not {list(expect_bands)}"
        )
    model = build_autoencoder(config)
    _load_weights(model, ck["state_dict"], path)
    return model, meta


def _load_weights(
    model: torch.nn.Module, state_dict: Mapping[str, Any], path: str | os.PathLike[str]
) -> None:
    """Load ``state_dict`` into ``model`` strictly and set eval mode.

    Raises
    ------
    ModelError
        When the weights do not fit the model's configuration (named after ``path``).
    """
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ModelError(f"{path}: weights do not fit the configuration: {err}") from err
    model.eval()


# --------------------------------------------------------------------------------------
# Fused model bundles: every sensor's autoencoder + the fusion layers + configs, one file.

FUSION_FORMAT = "latentcube.fusion"
#: File names looked up, in this order, when a bundle is given as a directory.
BUNDLE_FILES = ("model.pt", "best.pt")


def save_fusion_checkpoint(
    path: str | os.PathLike[str],
    model: FusionModel,
    *,
    extra: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a fused model bundle: all autoencoders, the fusion layers and every config.

    Parameters
    ----------
    path
        Target ``.pt`` file (a ``.json`` sidecar with the metadata is written beside it).
    model
        The fusion model.
    extra
        JSON-serialisable metadata: provenance, metrics, loss configurations.
    training_state
        Optimiser/scheduler/RNG state for resuming.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from latentcube.sensors import SENSORS

    cfg = model.config
    fields = {
        "fusion_config": cfg.model_dump(mode="json"),
        "mode": cfg.mode,
        "sensors": list(cfg.sensors),
        "autoencoder_configs": {
            s: model.autoencoder(s).config.model_dump(mode="json") for s in cfg.sensors
        },
        "sensor_specs": {
            s: SENSORS[s].model_dump(mode="json") for s in cfg.sensors if s in SENSORS
        },
    }
    return _write_model_file(path, FUSION_FORMAT, fields, model, extra, training_state)


def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file of a bundle given as a file or as a directory."""
    path = Path(path)
    if path.is_dir():
        for name in BUNDLE_FILES:
            if (path / name).is_file():
                return path / name
        raise ModelError(f"{path} is a directory without a model file ({', '.join(BUNDLE_FILES)})")
    return path


def build_fusion_from_meta(meta: Mapping[str, Any], where: str = "bundle") -> FusionModel:
    """An untrained :class:`FusionModel` with the architecture described by ``meta``.

    Sensors the bundle declares and this session lacks are registered.
    """
    from latentcube.models.fusion import FusionConfig, FusionModel
    from latentcube.sensors import SensorSpec, ensure_sensor

    try:
        for spec in meta.get("sensor_specs", {}).values():
            ensure_sensor(SensorSpec.model_validate(spec))
        cfg = FusionConfig.model_validate(meta["fusion_config"])
        aes = {
            s: build_autoencoder(AutoencoderConfig.model_validate(meta["autoencoder_configs"][s]))
            for s in cfg.sensors
        }
        return FusionModel(cfg, aes)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{where}: invalid fusion configuration: {err}") from err


def load_fusion_checkpoint(path: str | os.PathLike[str]) -> tuple[FusionModel, dict[str, Any]]:
    """Load a fused model bundle (file or directory), validated, in eval mode.

    Raises
    ------
    ModelError
        For a missing, corrupt or foreign file, or weights that do not fit.
    """
    path = resolve_bundle(path)
    return _fusion_from(read_checkpoint(path, formats=(FUSION_FORMAT,)), path)


def _fusion_from(
    ck: Mapping[str, Any], path: str | os.PathLike[str]
) -> tuple[FusionModel, dict[str, Any]]:
    """The fused model of a bundle already read by :func:`read_checkpoint`."""
    model = build_fusion_from_meta(ck["meta"], str(path))
    _load_weights(model, ck["state_dict"], path)
    return model, ck["meta"]


def load_any(
    path: str | os.PathLike[str],
) -> tuple[ContextAutoencoder | FusionModel, dict[str, Any]]:
    """Load a stage-1 checkpoint or a fused bundle, whichever ``path`` holds (one read)."""
    path = resolve_bundle(path)
    ck = read_checkpoint(path, formats=(FORMAT, FUSION_FORMAT))
    if ck["meta"]["format"] == FUSION_FORMAT:
        return _fusion_from(ck, path)
    return _autoencoder_from(ck, path)


def default_model_path() -> Path:
    """Folder of the fused S1 + S2 ``fast`` model shipped with latentcube (see MODEL_CARD.md)."""
    from importlib import resources

    p = Path(str(resources.files("latentcube") / "samples" / "default_model"))
    if not (p / "model.pt").is_file():
        raise FileNotFoundError(
            f"the shipped default model is missing at {p}; rebuild it with "
            "scripts/train_default_model.py or pass --model"
        )
    return p


# --------------------------------------------------------------------------------------
# The one model type.

#: Checkpoint format of each bundle kind.
_KIND_FORMATS = {"autoencoder": FORMAT, "fusion": FUSION_FORMAT}


@dataclass
class ModelBundle:
    """A trained model with its configuration and metadata, whatever its kind.

    A stage-1 autoencoder is a bundle of one sensor; a fused model is a bundle of
    all its sensors. The inference engine and the CLI ask the bundle what it is
    (:attr:`kind`, :attr:`sensors`, :attr:`bands`, ...) instead of testing the
    model's class.

    Parameters
    ----------
    model
        A :class:`~latentcube.models.autoencoder.ContextAutoencoder` or a
        :class:`~latentcube.models.fusion.FusionModel`.
    meta
        The checkpoint metadata (provenance, metrics, identity, ...); empty for a
        model that was never saved.
    path
        The ``.pt`` file the bundle was read from, if any.

    Examples
    --------
    >>> bundle = ModelBundle.load(default_model_path())          # doctest: +SKIP
    >>> bundle.kind, bundle.sensors, bundle.latent_dim           # doctest: +SKIP
    ('fusion', ('s2', 's1'), 7)
    """

    model: ContextAutoencoder | FusionModel
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def kind(self) -> str:
        """``"autoencoder"`` (stage 1, one sensor) or ``"fusion"``."""
        return "autoencoder" if isinstance(self.model, ContextAutoencoder) else "fusion"

    @property
    def sensors(self) -> tuple[str, ...]:
        """The sensors the model reads, the reference sensor first."""
        if isinstance(self.model, ContextAutoencoder):
            return (self.model.config.sensor,)
        return tuple(self.model.config.sensors)

    def autoencoder(self, sensor: str) -> ContextAutoencoder:
        """The stage-1 autoencoder of ``sensor``."""
        if isinstance(self.model, ContextAutoencoder):
            if sensor != self.model.config.sensor:
                raise ModelError(
                    f"{self.name} is a {self.model.config.sensor!r} model, not {sensor!r}"
                )
            return self.model
        if sensor not in self.model.sensors:
            raise ModelError(f"{self.name} has no {sensor!r} autoencoder ({list(self.sensors)})")
        return self.model.autoencoder(sensor)

    @property
    def bands(self) -> dict[str, tuple[str, ...]]:
        """The band order each sensor's input must have."""
        return {s: tuple(self.autoencoder(s).config.bands) for s in self.sensors}

    @property
    def latent_dim(self) -> int:
        """Size of the vector the bundle embeds each pixel-date into."""
        if isinstance(self.model, ContextAutoencoder):
            return int(self.model.config.latent_dim)
        return int(self.model.config.embed_dim)

    @property
    def supports_dense(self) -> bool:
        """Whether every autoencoder has the dense path (``fast``/``tiny``)."""
        return all(self.autoencoder(s).supports_dense for s in self.sensors)

    @property
    def variant(self) -> str:
        """The stage-1 architecture (``paper``, ``fast``, ``tiny``) of the reference sensor."""
        return str(self.autoencoder(self.sensors[0]).config.variant)

    @property
    def name(self) -> str:
        """The file the bundle came from, or a description of an unsaved model."""
        return str(self.path) if self.path is not None else f"<unsaved {self.kind} model>"

    @property
    def format(self) -> str:
        """The checkpoint format string of this kind."""
        return _KIND_FORMATS[self.kind]

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        extra: Mapping[str, Any] | None = None,
        training_state: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the bundle atomically as ``path`` (``.pt``) with a ``.json`` sidecar.

        Parameters
        ----------
        path
            Target ``.pt`` file.
        extra
            JSON-serialisable metadata (provenance, metrics, ...), written beside
            the configuration.
        training_state
            Optimiser/scheduler/RNG state for resuming (tensors and plain types).

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        if isinstance(self.model, ContextAutoencoder):
            out = save_checkpoint(path, self.model, extra=extra, training_state=training_state)
        else:
            out = save_fusion_checkpoint(
                path, self.model, extra=extra, training_state=training_state
            )
        self.path = out
        return out

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        kind: str | None = None,
        sensor: str | None = None,
        expect_bands: Sequence[str] | None = None,
    ) -> ModelBundle:
        """Read a bundle (a ``.pt`` file, or a folder holding ``model.pt`` or ``best.pt``).

        Loads with ``torch.load(weights_only=True)``, checks the format and its
        version, builds the model from its stored configuration and loads the
        weights strictly; the model is returned in eval mode on the CPU. Every
        checkpoint written by the released versions loads (format version 1).

        Parameters
        ----------
        path
            File or folder.
        kind
            Require ``"autoencoder"`` or ``"fusion"``.
        sensor
            Require a stage-1 model of this sensor (implies ``kind="autoencoder"``).
        expect_bands
            Band order the caller will feed a stage-1 model; another band set or
            order raises.

        Returns
        -------
        ModelBundle

        Raises
        ------
        ModelError
            For a missing, corrupt, hostile or foreign file, another format
            version or kind, another sensor or band set, or weights that do not
            fit the configuration.
        """
        if sensor is not None or expect_bands is not None:
            kind = kind or "autoencoder"
        if kind is not None and kind not in _KIND_FORMATS:
            raise ValueError(f"kind must be one of {sorted(_KIND_FORMATS)}, not {kind!r}")
        file = resolve_bundle(path)
        formats = (_KIND_FORMATS[kind],) if kind else tuple(_KIND_FORMATS.values())
        ck = read_checkpoint(file, formats=formats)
        model: ContextAutoencoder | FusionModel
        if ck["meta"]["format"] == FUSION_FORMAT:
            model, meta = _fusion_from(ck, file)
        else:
            model, meta = _autoencoder_from(ck, file, expect_bands, sensor)
        return cls(model, meta, file)

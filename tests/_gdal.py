"""A GDAL with the Zarr v3 driver for tests: the libgdal of pyogrio's wheels, through ctypes.

rasterio's wheels bundle GDAL 3.10, which cannot read Zarr v3 as zarr-python 3 writes
it; pyogrio's wheels (0.13) bundle GDAL 3.12 with the Zarr raster driver, but pyogrio
has no raster API. This helper drives that libgdal with ctypes (``GDALOpenEx``,
``GDALTranslate``) in a subprocess, so it never shares a process with rasterio's own
libgdal. It only finds the library file; pyogrio is not imported here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = r"""
import ctypes, sys

lib = ctypes.CDLL(sys.argv[1])
lib.GDALAllRegister()
lib.GDALVersionInfo.restype = ctypes.c_char_p
lib.GDALVersionInfo.argtypes = [ctypes.c_char_p]
lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
lib.GDALOpenEx.restype = ctypes.c_void_p
lib.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint] + [ctypes.c_void_p] * 3
lib.GDALTranslateOptionsNew.restype = ctypes.c_void_p
lib.GDALTranslateOptionsNew.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
lib.GDALTranslate.restype = ctypes.c_void_p
lib.GDALTranslate.argtypes = [
    ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
]
lib.GDALClose.argtypes = [ctypes.c_void_p]
print("GDAL", lib.GDALVersionInfo(b"RELEASE_NAME").decode(), flush=True)
# GDAL_OF_RASTER | GDAL_OF_VERBOSE_ERROR
src = lib.GDALOpenEx(sys.argv[2].encode(), 0x02 | 0x40, None, None, None)
if not src:
    sys.exit(2)
argv = (ctypes.c_char_p * 3)(b"-of", b"GTiff", None)
opts = lib.GDALTranslateOptionsNew(argv, None)
dst = lib.GDALTranslate(sys.argv[3].encode(), src, opts, None)
if dst:
    lib.GDALClose(dst)
lib.GDALClose(src)
sys.exit(0 if dst else 3)
"""


@dataclass(frozen=True)
class Translation:
    """What one ``gdal_translate`` run said: ``ok`` when it wrote the file (GDAL may still
    have printed errors, e.g. about arrays it could not read)."""

    ok: bool
    messages: str


def library() -> Path | None:
    """The libgdal bundled in the installed pyogrio wheel, or None (no pyogrio, or built
    against a system GDAL)."""
    spec = importlib.util.find_spec("pyogrio")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    for folder in (package.parent / "pyogrio.libs", package / ".dylibs"):
        found = sorted(folder.glob("libgdal*"))
        if found:
            return found[0]
    return None


def translate(source: str, dest: Path, lib: Path) -> Translation:
    """``gdal_translate -of GTiff source dest`` with the GDAL at ``lib``, in a subprocess.

    ``messages`` holds GDAL's version line and every warning and error it printed.
    """
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(lib), source, str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Translation(res.returncode == 0, res.stdout + res.stderr)

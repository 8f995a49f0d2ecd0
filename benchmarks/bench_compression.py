"""What ``latentcube embed --compression gzip`` costs against the default zstd.

The bundled sample cube (64 x 64 px, 57 dates, S2 + S1) is embedded with the shipped
default model by ``embed_to_zarr`` (the library call behind ``latentcube embed``), once
per codec in turn (zstd, gzip, zstd, gzip, ...), each run in a fresh Python process so
that both codecs see the same load on a shared machine. For each run the script prints:

* the wall time of the ``embed_to_zarr`` call (model, chunk writes, metadata; imports
  and interpreter start excluded, they do not depend on the codec);
* the store's size on disk (every file of the store);
* the time to read the whole store back (``open_embedding(store).load()``, median of
  3 reads in that process, the files in the page cache).

Then the medians per codec and the ratios gzip / zstd, and the codecs alone on the
embedding's chunk files (one date each, as stored): encode and decode time and size for
zstd level 0 (zarr's default) and gzip levels 1 (``--compression gzip``) and 6, through
numcodecs, best of 5 passes. Optionally ``--side N`` embeds the
sample tiled in space to N x N px (``bench_embed_cli.tiled_cube``, its first
``--dates`` dates), where the chunk writes weigh more against the model.

Usage: ``python benchmarks/bench_compression.py [--repeats 3] [--side 0] [--dates 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RUN = textwrap.dedent(
    """
    import json, statistics, sys, time
    from pathlib import Path
    from latentcube.bundle import default_model_path
    from latentcube.embedding_store import open_embedding
    from latentcube.inference import embed_to_zarr
    if __name__ == "__main__":
        cube, out, codec = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
        t0 = time.perf_counter()
        embed_to_zarr(cube, default_model_path(), out, compression=codec, progress=False)
        t_embed = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        reads = []
        for _ in range(3):
            t0 = time.perf_counter()
            open_embedding(out).load()
            reads.append(time.perf_counter() - t0)
        print(json.dumps({"embed_s": t_embed, "bytes": size, "read_s": statistics.median(reads)}))
    """
)


def _cube(tmp: Path, side: int, dates: int) -> str:
    """The sample cube's path, or the sample tiled to ``side`` px written under ``tmp``."""
    from latentcube.cube.readers import demo_cube_path, load_demo_cube

    if not side:
        return str(demo_cube_path())
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_embed_cli import _write_cube, tiled_cube

    return str(_write_cube(tiled_cube(load_demo_cube(), side, dates), tmp / "cube.zarr"))


def codecs_alone(store: Path) -> None:
    """Encode and decode every embedding chunk of ``store`` with each codec; print the cost."""
    import time

    import numcodecs
    import numpy as np

    from latentcube.embedding_store import open_embedding

    emb = open_embedding(store)["embedding"].values
    chunks = [np.ascontiguousarray(emb[:, t]).tobytes() for t in range(emb.shape[1])]
    raw = sum(len(c) for c in chunks)
    print(f"codecs alone on {len(chunks)} embedding chunks ({raw / 2**20:.2f} MiB raw):")
    for name, codec in (
        ("zstd 0", numcodecs.Zstd(level=0)),
        ("gzip 1", numcodecs.GZip(level=1)),
        ("gzip 6", numcodecs.GZip(level=6)),
    ):
        enc_s, dec_s = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            encoded = [codec.encode(c) for c in chunks]
            enc_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for e in encoded:
                codec.decode(e)
            dec_s.append(time.perf_counter() - t0)
        size = sum(len(e) for e in encoded)
        print(f"  {name}: encode {min(enc_s) * 1e3:.1f} ms, decode {min(dec_s) * 1e3:.1f} ms, "
              f"{size / 2**20:.2f} MiB ({raw / size:.2f}x)")  # fmt: skip


def main() -> None:
    """Run the interleaved embeddings and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--side", type=int, default=0, help="tile the sample to this side (px)")
    ap.add_argument("--dates", type=int, default=16, help="dates of the tiled cube")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()} at the start")
    codecs = ("zstd", "gzip")
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in codecs}
    last = Path()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cube = _cube(tmp, args.side, args.dates)
        print(f"cube: {cube}")
        for k in range(args.repeats):
            for codec in codecs:
                out = tmp / f"emb_{codec}_{k}.zarr"
                res = subprocess.run(
                    [sys.executable, "-c", RUN, cube, str(out), codec],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                fig = json.loads(res.stdout.strip().splitlines()[-1])
                runs[codec].append(fig)
                last = out
                mib, read_ms = fig["bytes"] / 2**20, fig["read_s"] * 1e3
                print(f"run {k + 1} {codec}: embed {fig['embed_s']:.2f} s, {mib:.2f} MiB, "
                      f"read {read_ms:.0f} ms")  # fmt: skip
        codecs_alone(last)
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]} for c in codecs}
    for c in codecs:
        m = med[c]
        print(f"median {c}: embed {m['embed_s']:.2f} s, {m['bytes'] / 2**20:.2f} MiB, "
              f"read {m['read_s'] * 1e3:.0f} ms")  # fmt: skip
    z, g = med["zstd"], med["gzip"]
    ratios = {k: g[k] / z[k] for k in ("embed_s", "bytes", "read_s")}
    print(f"gzip / zstd: embed time {ratios['embed_s']:.2f}, store size {ratios['bytes']:.2f}, "
          f"read time {ratios['read_s']:.2f}")  # fmt: skip
    print(f"load average {os.getloadavg()} at the end")


if __name__ == "__main__":
    main()

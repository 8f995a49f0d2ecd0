"""Safe outputs: disjoint from inputs, locked while a run writes, swapped in only when complete."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from latentcube.errors import OutputError
from latentcube.io import check_disjoint, check_writable, locked, replacing

pytestmark = pytest.mark.bad_inputs


def test_check_disjoint_refuses_same_inside_and_containing(tmp_path):
    cube = tmp_path / "a" / "cube.zarr"
    cube.mkdir(parents=True)
    for out, how in [
        (cube, "is the input"),
        (cube / "emb", "is inside"),
        (tmp_path / "a", "contains"),
    ]:
        with pytest.raises(OutputError, match=how):
            check_disjoint(out, [cube])
    check_disjoint(tmp_path / "a" / "emb.zarr", [cube, None])  # a sibling is fine


def test_check_disjoint_sees_through_symlinks(tmp_path):
    cube = tmp_path / "cube.zarr"
    cube.mkdir()
    link = tmp_path / "link.zarr"
    link.symlink_to(cube)
    with pytest.raises(OutputError):
        check_disjoint(link, [cube])


def test_check_writable(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_writable(f / "out.zarr")
    link = tmp_path / "l"
    link.symlink_to(tmp_path)
    with pytest.raises(OutputError, match="symbolic link"):
        check_writable(link)
    check_writable(tmp_path / "new" / "deeper" / "out.zarr")


def test_replacing_keeps_the_old_output_when_the_new_run_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), replacing(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with replacing(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replacing_refuses_an_existing_output_without_overwrite(tmp_path):
    target = tmp_path / "out.pt"
    target.write_bytes(b"model")
    with pytest.raises(OutputError, match="exists"), replacing(target) as tmp:
        tmp.write_bytes(b"other")
    assert target.read_bytes() == b"model"


def test_lock_refuses_a_second_run_and_is_released_when_the_process_dies(tmp_path):
    out = tmp_path / "emb.zarr"
    code = (
        "import sys, time; from latentcube.io import locked\n"
        f"with locked({str(out)!r}):\n    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="in use"), locked(out):
            pass
    finally:
        proc.kill()
        proc.wait()
    with locked(out):  # the OS released the dead process's lock
        assert os.path.exists(tmp_path / ".emb.zarr.lock")


def test_hash_zarr_metadata_reads_the_metadata_files_only(tmp_path):
    """The digest is that of the group's and arrays' zarr.json, whatever the chunks hold."""
    import hashlib

    from latentcube.io import hash_zarr_metadata, write_zarr

    from conftest import tiny_cube

    store = write_zarr(tiny_cube(n_time=4, ny=6, nx=6, seed=0), tmp_path / "c.zarr")
    ref = hashlib.sha256()
    metas = sorted(store.rglob("zarr.json"), key=lambda p: (p.parent != store, p.as_posix()))
    assert len(metas) > 1
    for p in metas:
        ref.update(str(p.relative_to(store)).encode())
        ref.update(p.read_bytes())
    h = hashlib.sha256()
    assert hash_zarr_metadata(store, h)
    assert h.hexdigest() == ref.hexdigest()
    # chunk files do not count; a metadata file does
    chunk = next(p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes() + b"x")
    h2 = hashlib.sha256()
    hash_zarr_metadata(store, h2)
    assert h2.hexdigest() == ref.hexdigest()
    # not a Zarr directory store: False and the hash untouched
    h3 = hashlib.sha256()
    assert not hash_zarr_metadata(tmp_path, h3)
    assert h3.hexdigest() == hashlib.sha256().hexdigest()

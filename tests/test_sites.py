"""build_cubes against the local static STAC catalog of the cube tests; sites tables; flux sites."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from latentcube.cube import build as build_module
from latentcube.cube.sites import (
    MANIFEST_COLUMNS,
    build_cubes,
    flux_sites,
    manifest_stores,
    read_manifest,
    read_sites,
)
from latentcube.errors import CubeError, OutputError, StacError
from latentcube.io import locked, open_zarr
from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

from conftest import shared_path

START, END = "2018-09-15", "2018-10-20"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    src = read_source(shared_path(FLANDERS, PATCH))
    return make_catalog(tmp_path_factory.mktemp("stac"), src)


def _sites(n_ok=3):
    """Sites inside the catalog's 640 m footprint, one outside it, one without items in time."""
    lon, lat = centre_lonlat()
    rows = [
        {"id": f"ok{i}", "lat": lat + 0.0005 * i, "lon": lon - 0.0007 * i, "start": START,
         "end": END, "size_m": 200}
        for i in range(n_ok)
    ]  # fmt: skip
    rows.append({"id": "sea", "lat": lat + 1.0, "lon": lon, "start": START, "end": END})
    rows.append(
        {"id": "winter", "lat": lat, "lon": lon, "start": "2019-01-01", "end": "2019-02-01"}
    )
    return pd.DataFrame(rows)


def _mtimes(folder):
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


KW = {"sensors": ("s2",), "progress": False}


@pytest.mark.shared
def test_failures_recorded_and_rerun_builds_only_them(catalog, tmp_path, monkeypatch):
    out = tmp_path / "cubes"
    man = build_cubes(_sites(), out, scheduler="synchronous", catalog=str(catalog), **KW)
    assert list(man.columns) == list(MANIFEST_COLUMNS)
    assert (out / "manifest.csv").exists()
    by = man.set_index("id")
    assert list(by.loc[["ok0", "ok1", "ok2"], "status"]) == ["ok"] * 3
    assert list(by.loc[["sea", "winter"], "status"]) == ["failed"] * 2
    for sid in ("sea", "winter"):
        assert "StacError: no Sentinel-2 items" in by.loc[sid, "error"]
        assert not (out / f"{sid}.zarr").exists()
    for sid in ("ok0", "ok1", "ok2"):
        cube = open_zarr(out / f"{sid}.zarr")
        assert int(by.loc[sid, "dates"]) == cube.sizes["time"] == 3
        assert float(by.loc[sid, "valid_fraction"]) == pytest.approx(
            float(cube["s2_valid"].mean()), abs=1e-6
        )
        assert cube.sizes["y"] == cube.sizes["x"] == 20  # size_m 200
        assert by.loc[sid, "error"] == ""
    assert manifest_stores(out) == [out / f"ok{i}.zarr" for i in range(3)]

    # rerun: only the two failed sites are given to build_cube; complete stores are untouched
    before = _mtimes(out)
    calls = []
    real = build_module.build_cube
    monkeypatch.setattr(
        build_module, "build_cube", lambda **kw: calls.append(kw["out"].name) or real(**kw)
    )
    time.sleep(0.01)
    again = build_cubes(_sites(), out, scheduler="synchronous", catalog=str(catalog), **KW)
    assert sorted(calls) == ["sea.zarr", "winter.zarr"]
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k.startswith("ok")} == {
        k: v for k, v in before.items() if k.startswith("ok")
    }
    a, b = man.set_index("id"), again.set_index("id")
    assert (a.loc["ok0":"ok2", "finished"] == b.loc["ok0":"ok2", "finished"]).all()

    # a site that is fixed in the table is built; nothing else is touched
    fixed = _sites()
    fixed.loc[fixed["id"] == "winter", ["start", "end"]] = [START, END]
    calls.clear()
    third = build_cubes(fixed, out, scheduler="synchronous", catalog=str(catalog), **KW)
    assert sorted(calls) == ["sea.zarr", "winter.zarr"]
    assert third.set_index("id").loc["winter", "status"] == "ok"

    # a lost manifest: complete stores are found by build_cube and returned, not rebuilt;
    # a store built for another request (other dates) is not replaced
    (out / "manifest.csv").unlink()
    calls.clear()
    before = _mtimes(out)
    fourth = build_cubes(_sites(n_ok=2), out, scheduler="synchronous", catalog=str(catalog), **KW)
    assert sorted(calls) == ["ok0.zarr", "ok1.zarr", "sea.zarr", "winter.zarr"]
    assert set(fourth["id"]) == {"ok0", "ok1", "sea", "winter"}
    status = fourth.set_index("id")["status"]
    assert status.to_dict() == {"ok0": "ok", "ok1": "ok", "sea": "failed", "winter": "failed"}
    assert (out / "winter.zarr" / "zarr.json").exists()  # the store of other dates is kept
    assert {k: v for k, v in _mtimes(out).items() if k.endswith("zarr.json")} == {
        k: v for k, v in before.items() if k.endswith("zarr.json")
    }


@pytest.mark.shared
def test_sites_are_dask_tasks_on_a_local_cluster(catalog, tmp_path):
    out = tmp_path / "cubes"
    man = build_cubes(
        _sites(n_ok=2), out, scheduler="local", workers=2, catalog=str(catalog), **KW
    ).set_index("id")
    assert man.loc[["ok0", "ok1"], "status"].tolist() == ["ok", "ok"]
    assert man.loc[["sea", "winter"], "status"].tolist() == ["failed", "failed"]
    before = _mtimes(out)
    time.sleep(0.01)
    again = build_cubes(
        _sites(n_ok=2), out, scheduler="local", workers=2, catalog=str(catalog), **KW
    ).set_index("id")
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k.startswith("ok")} == {
        k: v for k, v in before.items() if k.startswith("ok")
    }
    assert (again.loc[["ok0", "ok1"], "finished"] == man.loc[["ok0", "ok1"], "finished"]).all()
    assert (again.loc[["sea", "winter"], "finished"] != "").all()


def test_site_errors_are_recorded_and_bugs_stop_the_run(tmp_path, monkeypatch):
    def fake(**kw):
        name = kw["out"].name
        if name == "http.zarr":
            raise StacError("loading S2 keeps failing after 5 retries: HTTP 503")
        if name == "net.zarr":
            raise ConnectionResetError("connection reset by peer")
        if name == "bug.zarr":
            raise ZeroDivisionError("a bug")
        raise AssertionError("not reached")

    monkeypatch.setattr(build_module, "build_cube", fake)
    sites = pd.DataFrame(
        {"id": ["http", "net"], "lat": [50.0, 50.0], "lon": [4.0, 4.0], "start": START, "end": END}
    )
    man = build_cubes(sites, tmp_path / "o", scheduler="synchronous", progress=False)
    assert man["status"].tolist() == ["failed", "failed"]
    assert man["error"].tolist() == [
        "StacError: loading S2 keeps failing after 5 retries: HTTP 503",
        "ConnectionResetError: connection reset by peer",
    ]
    bug = pd.concat([sites, sites.assign(id=["bug", "later"])], ignore_index=True)
    with pytest.raises(ZeroDivisionError):
        build_cubes(bug, tmp_path / "o", scheduler="synchronous", progress=False)
    left = read_manifest(tmp_path / "o").set_index("id")
    assert left.loc["http", "status"] == "failed"  # rerun, failed again, recorded
    assert left.loc["bug", "status"] == left.loc["later", "status"] == "pending"


def test_build_cubes_refuses_bad_arguments_and_a_locked_folder(tmp_path):
    sites = pd.DataFrame({"id": ["a"], "lat": [50.0], "lon": [4.0], "start": START, "end": END})
    with pytest.raises(ValueError, match="start"):
        build_cubes(sites, tmp_path / "o", start="2020-01-01")
    with pytest.raises(CubeError, match="missing column"):
        build_cubes(sites.drop(columns="lat"), tmp_path / "o")
    with locked(tmp_path / "o"), pytest.raises(OutputError, match="in use"):
        build_cubes(sites, tmp_path / "o", scheduler="synchronous", progress=False)
    assert not (tmp_path / "o" / "manifest.csv").exists()


GOOD = (
    "id,lat,lon,start,end,size_m\n"
    "A1,50.1,4.2,2020-01-01,2020-12-31,900\n"
    "B_2,45,10,2021-03-01,2021-09-30,\n"
)


def test_read_sites_reads_a_good_file(tmp_path):
    f = tmp_path / "sites.csv"
    f.write_text(GOOD)
    df = read_sites(f)
    assert df["id"].tolist() == ["A1", "B_2"]
    assert df["start"].tolist() == [pd.Timestamp("2020-01-01"), pd.Timestamp("2021-03-01")]
    assert df["size_m"].iloc[0] == 900 and np.isnan(df["size_m"].iloc[1])
    frame = read_sites(pd.read_csv(f))
    assert frame["lat"].tolist() == [50.1, 45.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,lat,start,end\nA,1,2020-01-01,2020-02-01\n", "missing column(s) lon"),
        (GOOD + "A1,50,4,2020-01-01,2020-02-01,\n", "row 4: duplicate id 'A1' (first in row 2)"),
        (GOOD + "C,91,4,2020-01-01,2020-02-01,\n", "row 4: lat 91 out of range"),
        (GOOD + "C,50,-181,2020-01-01,2020-02-01,\n", "row 4: lon -181 out of range"),
        (GOOD + "C,fifty,4,2020-01-01,2020-02-01,\n", "row 4: lat 'fifty' is not a number"),
        (GOOD + "C,50,4,2020-13-01,2020-02-01,\n", "row 4: bad start date '2020-13-01'"),
        (GOOD + "C,50,4,2020-01-01,01/02/2020,\n", "row 4: bad end date '01/02/2020'"),
        (GOOD + "C,50,4,2020-03-01,2020-02-01,\n", "row 4: end 2020-02-01 is before start"),
        (GOOD + ",50,4,2020-01-01,2020-02-01,\n", "row 4: empty id"),
        (GOOD + "../x,50,4,2020-01-01,2020-02-01,\n", "row 4: id '../x' cannot name a store"),
        (GOOD + "C,50,4,2020-01-01,2020-02-01,-5\n", "row 4: size_m -5 is not positive"),
        ("id,lat,lon,start,end\n", "no sites"),
    ],
)
def test_read_sites_errors_name_file_and_row(tmp_path, text, message):
    f = tmp_path / "my_sites.csv"
    f.write_text(text)
    with pytest.raises(CubeError) as err:
        read_sites(f)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{f}: ") and message in msg


def test_read_sites_missing_file(tmp_path):
    with pytest.raises(CubeError, match="no such sites file"):
        read_sites(tmp_path / "none.csv")


def test_flux_sites_registry():
    df = flux_sites()
    spec_ids = (
        "BE-Maa, BE-Lcr, CZ-Stn, CZ-Lnz, DE-Hai, DE-HoH, DK-Sor, FR-Fon, FR-Hes, IT-BFt, FR-Pue, "
        "BE-Bra, CH-Dav, CZ-BK1, CZ-Raj, DE-Msr, DE-Obe, DE-RuW, DK-Gds, FR-Bil, FR-FBn, IT-Lav, "
        "IT-Ren, NL-Loo, SE-Nor, BE-Dor, CH-Aws, CH-Cha, CH-Fru, DE-Gri, DE-RuR, FR-CLt, FR-Lqu, "
        "FR-Lus, FR-Mej, FR-Tou, IT-MBo, IT-Niv, IT-Tor, BE-Vie, CH-Lae, DE-Har, IT-Lsn, DE-BeR, "
        "SE-Htm, DE-Brs, FR-Lam"
    ).split(", ")
    assert df["id"].tolist() == spec_ids  # the spec's order: ScienceCube ids 000-046
    assert df["cube_id"].tolist() == [f"{i:03d}" for i in range(47)]
    # every site in Europe, on valid coordinates, with a class and both sources
    assert df["lat"].between(40, 62).all() and df["lon"].between(-2, 19).all()
    assert df["igbp"].isin(["ENF", "EBF", "DBF", "MF", "GRA", "CRO", "CSH", "OSH", "URB"]).all()
    assert (df["source"].str.len() > 10).all() and (df["igbp_source"].str.len() > 10).all()
    # the sites read from the FLUXNET table are those the evaluation's registry knows
    fluxnet = df[df["source"].str.startswith("FLUXNET2015")]
    assert len(fluxnet) == 19
    ready = read_sites(flux_sites("2019-01-01", "2019-12-31", size_m=10000))
    assert len(ready) == 47 and (ready["size_m"] == 10000).all()


@pytest.mark.shared
def test_flux_sites_agree_with_the_fluxnet_table():
    from latentcube.evaluation.flux import site_registry

    loc = shared_path("fluxnet2015_monthly_cardamom_fluxval", "location_fluxnet.csv")
    reg = site_registry(loc)
    df = flux_sites().set_index("id")
    for sid, row in df.iterrows():
        if row["source"].startswith("FLUXNET2015"):
            s = reg[sid]
            assert (row["lat"], row["lon"], row["igbp"]) == (s.lat, s.lon, s.igbp)
        else:
            assert sid not in reg or sid == "SE-Htm"  # the others are not in that table
    assert os.path.basename(loc) == "location_fluxnet.csv"

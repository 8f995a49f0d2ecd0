"""Flux readers: generated FULLSET_DD / ICOS fixtures and the real SE-Htm, FLUXNET and
CarbonFluxBench samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentcube.errors import EvaluationError
from latentcube.evaluation.baselines import carbonfluxbench_reference
from latentcube.evaluation.flux import (
    GC_PER_UMOL_CO2_S_TO_DAY,
    read_flux,
    read_fluxnet_daily,
    read_fluxnet_monthly,
    read_icos_halfhourly,
    site_registry,
)

from conftest import shared_path


def write_fullset(path, gpp, qc, start="2018-01-01"):
    """A tiny file in the FLUXNET2015 FULLSET_DD layout (extra columns included)."""
    days = pd.date_range(start, periods=len(gpp), freq="D")
    pd.DataFrame(
        {
            "TIMESTAMP": days.strftime("%Y%m%d").astype(int),
            "TA_F": np.linspace(-2, 20, len(gpp)),
            "NEE_VUT_REF": -np.asarray(gpp),
            "NEE_VUT_REF_QC": qc,
            "GPP_NT_VUT_REF": gpp,
            "GPP_DT_VUT_REF": np.asarray(gpp) * 0.9,
        }
    ).to_csv(path, index=False)
    return path


def test_fullset_daily_qc_filter_and_missing(tmp_path):
    f = write_fullset(
        tmp_path / "FLX_DE-Tha_FLUXNET2015_FULLSET_DD_2018-2018_beta-3.csv",
        [1.5, -9999, 3.0, 4.0, 5.5],
        [1.0, 1.0, 0.5, 0.7, -9999],
    )
    df = read_fluxnet_daily(f)
    assert df.attrs["site"] == "DE-Tha"
    assert df.index[0] == pd.Timestamp("2018-01-01") and df.index.name == "date"
    # -9999 GPP -> NaN; QC 0.5 < 0.7 -> NaN; QC exactly 0.7 kept; missing QC -> NaN
    np.testing.assert_array_equal(df["GPP"].to_numpy(), [1.5, np.nan, np.nan, 4.0, np.nan])
    assert read_fluxnet_daily(f, min_qc=0.0)["GPP"].iloc[2] == 3.0
    assert read_flux(f)["GPP"].iloc[3] == 4.0  # format recognised from the header


def test_fullset_errors(tmp_path):
    bad = tmp_path / "FLX_XX-Abc_x.csv"
    pd.DataFrame({"TIMESTAMP": [20180101], "GPP": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(EvaluationError, match="GPP_NT_VUT_REF"):
        read_fluxnet_daily(bad)
    qc = write_fullset(tmp_path / "FLX_XX-Abc_q.csv", [1.0, 2.0], [50.0, 100.0])
    with pytest.raises(EvaluationError, match="fraction"):
        read_fluxnet_daily(qc)
    with pytest.raises(FileNotFoundError):
        read_fluxnet_daily(tmp_path / "nope.csv")


def write_icos(path, values, start_day="01/01/2017", time_fmt="%H:%M"):
    """Half-hourly rows stamped at the END of each interval, with a units row (latin-1)."""
    t0 = pd.Timestamp(pd.to_datetime(start_day, format="%d/%m/%Y"))
    ends = t0 + pd.to_timedelta(30 * (np.arange(len(values)) + 1), unit="min")
    lines = ["date,time,doy,GPP_PI_1_1_1", "dd/mm/yyyy,hh:mm (CET),-,umolm-2s-1\xa0"]
    for e, v in zip(ends, values, strict=True):
        lines.append(f"{e:%d/%m/%Y},{e.strftime(time_fmt)},{e.dayofyear},{v}")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return path


def test_icos_interval_end_units_and_missing(tmp_path):
    # day 1: 48 half-hours of 10 umol; day 2: 48 of 20 with 12 missing (75 % < 80 %)
    day2 = [20.0] * 48
    for k in range(12):
        day2[k] = -9999
    f = write_icos(tmp_path / "XX-Tst_2017.csv", [10.0] * 48 + day2)
    df = read_icos_halfhourly(f)
    # the row stamped 02/01 00:00 ends day 1's last interval: it must count for day 1
    assert list(df.index) == [pd.Timestamp("2017-01-01"), pd.Timestamp("2017-01-02")]
    assert df["n_valid"].tolist() == [48, 36]
    assert df["GPP"].iloc[0] == pytest.approx(10.0 * 12.011e-6 * 86400)
    assert np.isnan(df["GPP"].iloc[1])
    assert read_icos_halfhourly(f, min_valid_fraction=0.5)["GPP"].iloc[1] == pytest.approx(
        20 * GC_PER_UMOL_CO2_S_TO_DAY
    )
    # hh:mm:ss stamps (as in the 2017 file) read the same
    g = write_icos(tmp_path / "XX-Tst_b.csv", [10.0] * 48, time_fmt="%H:%M:%S")
    assert read_icos_halfhourly(g)["GPP"].iloc[0] == pytest.approx(df["GPP"].iloc[0])


def test_icos_overlapping_files_rejected(tmp_path):
    a = write_icos(tmp_path / "XX-Tst_a.csv", [1.0] * 48)
    b = write_icos(tmp_path / "XX-Tst_b.csv", [1.0] * 48)
    with pytest.raises(EvaluationError, match="more than one"):
        read_icos_halfhourly([a, b])


@pytest.mark.shared
def test_real_se_htm_daily_matches_halfhourly_sums():
    folder = shared_path("icos_se_htm_halfhourly")
    df = read_flux(folder)
    assert df.attrs["site"] == "SE-Htm"
    assert df.index[0] == pd.Timestamp("2015-01-01") and df.index[-1] == pd.Timestamp("2018-12-31")
    assert len(df) == 1461 and df["GPP"].notna().all()
    for f, year in [("SE-Htm_2016.csv", 2016), ("SE-Htm_2018_vs20190510.csv", 2018)]:
        # independent: each file holds exactly one year of interval-end rows
        raw = pd.read_csv(folder / f, skiprows=[1], encoding="latin-1")["GPP_PI_1_1_1"]
        expected = raw.to_numpy(float).sum() * 1800 * 12.011e-6
        got = df.loc[str(year), "GPP"].sum()
        assert got == pytest.approx(expected, rel=1e-9)
    # the documented daily means of the sample (gC m-2 d-1)
    means = df["GPP"].groupby(df.index.year).mean().round(1).tolist()
    assert means == [5.7, 5.4, 5.7, 5.2]


@pytest.mark.shared
def test_real_monthly_table_registry_and_carbonfluxbench():
    folder = shared_path("fluxnet2015_monthly_cardamom_fluxval")
    m = read_fluxnet_monthly(folder, sites=["DE-Tha"])
    june = m[m["month"].dt.month == 6]["GPP"]
    assert 10 < june.median() < 15
    with pytest.raises(EvaluationError, match="XX-None"):
        read_fluxnet_monthly(folder, sites=["XX-None"])
    reg = site_registry(folder / "location_fluxnet.csv")
    assert len(reg) >= 205
    assert reg["BE-Lon"].igbp == "CRO" and reg["BE-Lon"].lat == pytest.approx(50.5516)
    assert reg["SE-Htm"].lat == pytest.approx(56.10)
    ref = carbonfluxbench_reference(shared_path("carbonfluxbench_gpp_results"), ["SE-Htm"])
    med = ref["median_by_file"]["ctlstm_Koppen_minimal_ensemble"]
    assert med["R2"] == pytest.approx(0.648, abs=0.001)
    assert med["RMSE"] == pytest.approx(1.67, abs=0.01)
    assert len(ref["sites"]["SE-Htm"]) > 0


def test_gpp_in_other_units_is_refused(tmp_path):
    gpp = np.abs(np.sin(np.linspace(0, 3, 60))) * 12  # a plausible season, gC m-2 d-1
    ok = read_flux(write_fullset(tmp_path / "FLX_XX-Ok_FULLSET_DD.csv", gpp, np.ones(60)))
    assert ok["GPP"].max() == pytest.approx(gpp.max())
    bad = write_fullset(tmp_path / "FLX_XX-Big_FULLSET_DD.csv", gpp * 1000, np.ones(60))
    with pytest.raises(EvaluationError, match=r"FLX_XX-Big_FULLSET_DD.csv.*not in gC m-2 d-1"):
        read_flux(bad)

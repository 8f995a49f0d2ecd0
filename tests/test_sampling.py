"""The training-site sampler: land only, inside the region, reproducible, n honoured."""

from __future__ import annotations

import numpy as np
import pytest

from latentcube.cube.sampling import PAPER_REGION, land_mask, sample_sites
from latentcube.cube.sites import read_sites


@pytest.fixture(scope="module")
def paper():
    return sample_sites(250, PAPER_REGION, years=range(2017, 2025), seed=1)


def test_paper_sample_is_on_land_in_the_region_and_n_is_honoured(paper):
    assert paper["site"].nunique() == 250 and len(paper) == 500  # two windows per site
    assert paper["lon"].between(0, 30).all() and paper["lat"].between(42, 62).all()
    assert land_mask(paper["lat"].to_numpy(), paper["lon"].to_numpy()).all()
    per_site = paper.groupby("site")["year"].agg(list)
    assert all(len(set(y)) == 2 and set(y) <= set(range(2017, 2025)) for y in per_site)
    assert (paper["end"].str[:4] == paper["start"].str[:4]).all()
    table = read_sites(paper)  # a valid sites table for build_cubes
    assert (table["size_m"] == 900).all()
    # uniform in area: about as many sites north as south of the latitude halving the area
    mid = np.degrees(np.arcsin((np.sin(np.radians(42)) + np.sin(np.radians(62))) / 2))
    sites = paper.drop_duplicates("site")
    assert 0.25 < (sites["lat"] > mid).mean() < 0.75


def test_same_seed_same_sites_other_seed_other_sites(paper):
    again = sample_sites(250, PAPER_REGION, years=range(2017, 2025), seed=1)
    assert again.equals(paper)
    other = sample_sites(250, PAPER_REGION, years=range(2017, 2025), seed=2)
    assert not np.allclose(other["lat"], paper["lat"])


def test_sea_points_are_refused():
    # points known to be at sea and on land (1 km GLOBE mask)
    lat = np.array([54.5, 43.0, 50.85, 48.86])
    lon = np.array([3.0, 15.0, 4.35, 2.35])  # North Sea, Adriatic, Brussels, Paris
    assert land_mask(lat, lon).tolist() == [False, False, True, True]
    # a region that is mostly sea still yields land sites only
    coast = sample_sites(20, (2.0, 51.0, 4.0, 52.0), years=[2020], windows=1, seed=0)
    assert land_mask(coast["lat"].to_numpy(), coast["lon"].to_numpy()).all()
    assert len(coast) == 20


def test_minimum_distance_and_errors():
    far = sample_sites(30, PAPER_REGION, years=[2019, 2021], seed=3, min_distance_deg=1.0)
    xy = far.drop_duplicates("site")[["lon", "lat"]].to_numpy()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 99
    assert d.min() >= 1.0
    with pytest.raises(ValueError, match="found"):
        sample_sites(
            5, (-30.0, 40.0, -29.0, 41.0), years=[2020], windows=1, max_tries=3
        )  # Atlantic
    with pytest.raises(ValueError, match="distinct years"):
        sample_sites(5, years=[2020], windows=2)
    with pytest.raises(ValueError, match="region"):
        sample_sites(5, (10.0, 40.0, 5.0, 50.0))

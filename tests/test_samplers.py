"""The baseline samplers (pure ask/tell objects) and the core of benchmarks/steering.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nanopilot.plans.samplers import GPSampler, RandomSampler, RasterSampler, raster_indices
from nanopilot.plans.slads import SLADSSampler, erd_features, reduction_in_distortion, train_erd
from nanopilot.agents.steering import Lattice

N = 17
LATTICE = Lattice(-2.0, 2.0, -1.0, 1.0, N)
SCALES = {"strain": 1e-4, "omega": 5e-4, "chi": 1.5e-3}


def smooth(x, y):
    return {"strain": 1e-3 * np.sin(x), "omega": 0.01 * y + 0.005 * x, "chi": 0.02 * np.cos(x + y)}


def tiny_slads():
    g = np.arange(N)
    jj, ii = np.meshgrid(g, g, indexing="ij")
    images = [np.stack([np.sin(ii / 3 + k), (jj > 8 + k).astype(float) * 5, np.cos(jj / 4)], axis=-1)
              for k in range(2)]
    return train_erd(images, densities=(0.1, 0.3), per_mask=50)


SAMPLERS = {
    "raster": lambda: RasterSampler(LATTICE, 60),
    "random": lambda: RandomSampler(LATTICE, seed=1),
    "gp": lambda: GPSampler(LATTICE, n_initial=16, seed=1),
    "slads": lambda: SLADSSampler(LATTICE, tiny_slads(), SCALES, n_initial=16),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_propose_new_points_in_bounds_and_beat_a_constant_on_a_smooth_field(name):
    sampler = SAMPLERS[name]()
    seen = set()
    while len(sampler) < 60:
        points = sampler.ask(min(15, 60 - len(sampler)))
        if len(points) == 0:  # the raster's plan is done (8 x 7 points)
            break
        assert len(points) <= 15 and points.shape[1] == 2
        assert (points[:, 0] >= -2).all() and (points[:, 0] <= 2).all()
        assert (points[:, 1] >= -1).all() and (points[:, 1] <= 1).all()
        ii, jj = LATTICE.index(points[:, 0], points[:, 1])
        np.testing.assert_allclose(points, [LATTICE.position(ij) for ij in zip(ii, jj)])  # on the lattice
        keys = set(zip(ii.tolist(), jj.tolist()))
        assert len(keys) == len(points) and not keys & seen  # no duplicates, never twice
        seen |= keys
        sampler.tell(points, {**smooth(points[:, 0], points[:, 1]), "status": np.full(len(points), "ok")})
    assert len(sampler) >= 56 and len(sampler.ask(5)) <= 5
    maps = sampler.reconstruct()
    x, y = np.meshgrid(np.linspace(-2, 2, N), np.linspace(-1, 1, N))
    truth = smooth(x, y)
    for field, value in truth.items():
        assert maps[field].shape == (N, N)
        error = np.sqrt(np.mean((maps[field] - value) ** 2))
        constant = np.sqrt(np.mean((np.mean(value) - value) ** 2))
        assert error < 0.3 * constant, (field, error, constant)


def test_raster_is_uniform_with_corners_and_about_the_points_asked():
    for points in (25, 60, 81, 100):
        indices = raster_indices(N, points)
        assert abs(len(indices) - points) <= 0.1 * points
        assert {(0, 0), (N - 1, N - 1)} <= set(indices)
    assert len(raster_indices(N, 81)) == 81  # 9 x 9: twice the fine step
    with pytest.raises(ValueError, match="raster needs"):
        raster_indices(N, 2)


def test_failed_measurements_count_as_measured_but_are_not_used():
    sampler = GPSampler(LATTICE, n_initial=9, seed=0)
    first = sampler.ask(9)
    values = smooth(first[:, 0], first[:, 1])
    values["strain"][0] = np.nan
    sampler.tell(first, values)
    nxt = sampler.ask(5)
    assert not set(map(tuple, first.tolist())) & set(map(tuple, nxt.tolist()))
    assert np.isfinite(sampler.reconstruct()["strain"]).all()
    with pytest.raises(ValueError, match="lack"):
        sampler.tell(nxt, {"strain": np.zeros(len(nxt))})
    with pytest.raises(ValueError, match="inside"):
        sampler.tell(np.array([[9.0, 0.0]]), smooth(np.zeros(1), np.zeros(1)))
    with pytest.raises(ValueError, match="positive noise"):
        SLADSSampler(LATTICE, None, {"strain": 1.0})


def test_slads_target_is_largest_where_the_reconstruction_is_wrong():
    truth = np.zeros((N, N, 1))
    truth[:, 12:, 0] = 10.0  # a wall the measurements miss
    known = np.array([[i, j] for i in (0, 8) for j in (0, 8, 16)], dtype=float)
    values = truth[known[:, 1].astype(int), known[:, 0].astype(int)]
    candidates = np.array([[4, 8], [14, 8]])
    rd = reduction_in_distortion(truth, known, values, candidates)
    assert rd[1] > 10 * max(rd[0], 1e-9)
    features = erd_features(N, known, values, candidates)
    assert features.shape == (2, 5) and features[1, 3] == pytest.approx(6.0)


@pytest.mark.slow
def test_benchmark_core_runs_on_a_tiny_raster():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "steering.py"
    spec = importlib.util.spec_from_file_location("steering_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from nanopilot.model import Predictor
    predictor = Predictor.load()
    scales = bench.network_scales(predictor, N)
    assert all(v > 0 for v in scales.values())
    budgets = {"10%": 29, "20%": 58, "equal": 81}
    row = bench.bench_scene("crack", 100, N, predictor, scales, tiny_slads(), budgets)
    assert row["full"]["time"].sum() > 0 and 0 < row["full"]["near"] < 1
    for method in bench.METHODS:
        for name, budget in budgets.items():
            result = row[method, name]
            assert result["points"] <= budget and all(np.isfinite(list(result["ratio"].values())))
            assert result["time"].sum() < row["full"]["time"].sum()
    assert row["raster", "equal"]["walls"] >= 0
    verdict = bench.bars({key: bench.summarise([row], key) for key in row if key != "full"}, budgets)
    assert len(verdict) == 4


def test_slads_regressors_train_on_images_and_refuse_unknown_kinds():
    g = np.arange(N)
    jj, ii = np.meshgrid(g, g, indexing="ij")
    images = [np.stack([np.sin(ii / 3), (jj > 8).astype(float) * 5], axis=-1)]
    for kind in ("linear", "net"):
        model = train_erd(images, kind=kind, densities=(0.2,), per_mask=60)
        known = np.array([[0, 0], [16, 0], [0, 16], [16, 16], [8, 8]], dtype=float)
        features = erd_features(N, known, images[0][known[:, 1].astype(int), known[:, 0].astype(int)],
                                np.array([[4, 4], [8, 12]]))
        assert np.isfinite(model.predict(features)).all()
    with pytest.raises(ValueError, match="kind"):
        train_erd(images, kind="forest")

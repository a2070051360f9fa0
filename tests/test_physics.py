"""The forward model against the published formula, a direct pupil sum, and the geometry."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nanopilot.physics import (
    GAUSS_SIGMA_PER_PRECISION,
    Instrument,
    brightest_grid_peak,
    donut_points,
    intensity_scale,
    poisson,
    simulate,
)
from nanopilot.physics.forward import KNOWN_GRID_PEAKS, search_brightest_grid_peak, simulate_box

REFERENCE = Path(__file__).parent / "data" / "published_formula_patterns.npz"
INSTRUMENT = Instrument()


def direct_pupil_sum(strain, omega_deg, chi_deg, thickness, inst=INSTRUMENT, kernel="box"):
    """Slow, unfactored evaluation of PHYSICS.md section 2: every pixel against every donut point."""
    k, theta, g, s = inst.k, inst.bragg_angle, inst.g, inst.pupil_pitch
    rows, cols = inst.roi_shape
    x = np.arange(cols) - (cols - 1) / 2
    y = np.arange(rows) - (rows - 1) / 2
    gamma = np.arcsin(x * inst.pixel_size / inst.detector_distance) + theta
    qx = k * (np.cos(theta) - np.cos(gamma))
    qz = k * (np.sin(gamma) + np.sin(theta))
    qy = k * y * inst.pixel_size / inst.detector_distance
    grid = np.arange(inst.pupil_size) - (inst.pupil_size - 1) / 2
    uu, vv = np.meshgrid(grid, grid)
    radius = s * np.hypot(uu, vv)
    inside = (radius > inst.theta_in) & (radius < inst.theta_out)
    u, v = uu[inside], vv[inside]
    omega, chi = math.radians(omega_deg), math.radians(chi_deg)
    precision = inst.box_precision

    def kern(q):
        if kernel == "box":
            return (np.abs(q) < precision).astype(float)
        return np.exp(-0.5 * (q / (GAUSS_SIGMA_PER_PRECISION * precision)) ** 2)

    image = np.zeros((rows, cols))
    for chunk in np.array_split(np.arange(len(u)), 16):
        uc, vc = u[chunk][:, None, None], v[chunk][:, None, None]
        o_qx, o_qz, o_qy = -uc * s * k * np.sin(theta), uc * s * k * np.cos(theta), vc * s * k
        arg = thickness * (qz[None, None, :] - g / (1 + strain) - o_qz) / 2
        laue = thickness * np.sinc(arg / np.pi) ** 2
        term = laue * kern(qx[None, None, :] + g * omega - o_qx) * kern(qy[None, :, None] + g * chi - o_qy)
        image += term.sum(axis=0)
    return image


PARAM_SETS = [  # non-zero strain, both tilts, non-default thickness
    (0.0031, 0.012, -0.043, 117.0),
    (-0.0042, -0.027, 0.061, 80.0),
    (0.0017, 0.041, 0.088, 250.0),
    (-0.0008, -0.006, -0.071, 163.5),
    (0.0049, 0.033, 0.017, 64.0),
]


@pytest.mark.parametrize("params", PARAM_SETS)
def test_simulate_matches_direct_pupil_sum(params):
    expected = direct_pupil_sum(*params)
    got = simulate(np.array([params]), dtype=torch.float64)[0]
    assert expected.max() > 0
    assert np.abs(got - expected).max() / expected.max() <= 1e-6


def test_gauss_kernel_matches_direct_pupil_sum():
    params = PARAM_SETS[1]
    expected = direct_pupil_sum(*params, kernel="gauss")
    got = simulate(np.array([params]), kernel="gauss", dtype=torch.float64)[0]
    assert np.abs(got - expected).max() / expected.max() <= 1e-6


def test_simulate_reproduces_published_reference_patterns():
    ref = np.load(REFERENCE)
    got = simulate(ref["params"], dtype=torch.float64)
    assert np.abs(got - ref["images"]).max() / ref["images"].max() <= 1e-12
    got32 = simulate(ref["params"])
    assert got32.dtype == np.float32
    assert np.abs(got32 - ref["images"]).max() / ref["images"].max() <= 1e-6


def test_published_geometry_numbers():
    assert donut_points() == 6392
    assert math.degrees(INSTRUMENT.bragg_angle) == pytest.approx(15.867, abs=1e-3)
    assert simulate(np.zeros((1, 3)), dtype=torch.float64).max() == pytest.approx(2335.9, abs=0.1)
    assert brightest_grid_peak(INSTRUMENT) == pytest.approx(3505.8, abs=0.1)


def test_published_intensity_convention():
    centre = simulate(np.zeros((1, 3)), counts="published", dtype=torch.float64)[0]
    assert centre.max() == pytest.approx(7 * 2335.85 / 3505.81, rel=1e-4)  # "the centre pattern peaks near 4.7"
    ten_x = simulate(np.zeros((1, 3)), counts=70.0, dtype=torch.float64)[0]
    np.testing.assert_allclose(ten_x, 10 * centre, rtol=1e-12)
    assert intensity_scale(INSTRUMENT, "published") * brightest_grid_peak(INSTRUMENT) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="counts"):
        simulate(np.zeros((1, 3)), counts=-1.0)


def _laue_envelope(strain, thickness):
    """Column sums of a pattern divided by those of a vanishingly thin film: the Laue factor seen along x."""
    thin = 1e-3
    full = simulate(np.array([[strain, 0, 0, thickness]]), dtype=torch.float64)[0].sum(axis=0)
    flat = simulate(np.array([[strain, 0, 0, thin]]), dtype=torch.float64)[0].sum(axis=0)
    inside = flat > 0
    return np.where(inside, full / np.where(inside, flat, 1) * thin, np.nan)


def _centre(profile):
    x = np.arange(len(profile)) - (len(profile) - 1) / 2
    half = profile >= np.nanmax(profile) / 2
    return np.nansum(x * profile * half) / np.nansum(profile * half), int(half.sum())


def _pixels_per_radian(inst=INSTRUMENT):
    return inst.detector_distance / inst.pixel_size


def test_strain_moves_intensity_within_the_donut_along_x():
    inst = INSTRUMENT
    # Laue condition with the Qx box: the stripe sits at gamma - theta = -G e / ((1 + e) 2 K cos theta).
    for strain in (-0.003, 0.003):
        centre, _ = _centre(_laue_envelope(strain, 300.0))
        expected = -inst.g * strain / (1 + strain) / (2 * inst.k * math.cos(inst.bragg_angle)) * _pixels_per_radian()
        assert centre == pytest.approx(expected, abs=0.25)
    # ...while the donut itself (the support of the pattern) does not move
    support0 = simulate(np.zeros((1, 3)))[0] > 0
    support1 = simulate(np.array([[0.004, 0, 0]]))[0] > 0
    assert (support0 == support1).all()


def _support_centroid(params):
    image = simulate(np.array([params]), dtype=torch.float64)[0]
    rows, cols = np.nonzero(image > 0)
    return cols.mean() - 31.5, rows.mean() - 31.5


@pytest.mark.parametrize("omega", [-0.02, -0.01, 0.01, 0.02])
def test_omega_moves_the_donut_along_x(omega):
    inst = INSTRUMENT
    dx, dy = _support_centroid((0, omega, 0))
    expected = -inst.g * math.radians(omega) / (inst.k * math.sin(inst.bragg_angle)) * _pixels_per_radian()
    assert dx == pytest.approx(expected, abs=0.5)  # box quantisation: half a pixel
    assert dy == 0


@pytest.mark.parametrize("chi", [-0.08, -0.03, 0.03, 0.07])
def test_chi_moves_the_donut_along_y(chi):
    inst = INSTRUMENT
    dx, dy = _support_centroid((0, 0, chi))
    expected = -inst.g * math.radians(chi) / inst.k * _pixels_per_radian()
    assert dy == pytest.approx(expected, abs=0.5)
    assert dx == 0


def test_thicker_films_narrow_the_laue_rod_and_brighten_its_peak():
    inst = INSTRUMENT
    envelopes = {t: _laue_envelope(0.0, t) for t in (150.0, 300.0)}
    widths = {t: _centre(e)[1] for t, e in envelopes.items()}
    # FWHM of t sinc^2(t dQ / 2) is 5.566 / t in Qz, and dQz/dx = 2 K cos(theta) / (pixels per radian)
    for t, width in widths.items():
        expected = 5.566 / t / (2 * inst.k * math.cos(inst.bragg_angle)) * _pixels_per_radian()
        assert width == pytest.approx(expected, abs=1.5)
    assert np.nanmax(envelopes[300.0]) / np.nanmax(envelopes[150.0]) == pytest.approx(2.0, rel=0.02)


def test_gauss_kernel_is_differentiable_in_all_parameters():
    params = torch.tensor([[0.001, 0.01, -0.02, 120.0]], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda p: simulate(p, kernel="gauss", dtype=torch.float64), (params,), fast_mode=True)
    image = simulate(params, kernel="gauss", dtype=torch.float64)
    (image * torch.linspace(0, 1, 64, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(params.grad).all() and (params.grad != 0).all()


def test_simulate_batches_float32_and_tensors_consistently():
    rng = np.random.default_rng(1)
    params = np.column_stack([rng.uniform(-5e-3, 5e-3, 9), rng.uniform(-0.05, 0.05, 9), rng.uniform(-0.1, 0.1, 9)])
    whole = simulate(params)
    pieces = simulate(params, batch_size=4)
    np.testing.assert_allclose(whole, pieces, rtol=1e-6)
    as_tensor = simulate(torch.as_tensor(params))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (9, 64, 64)
    np.testing.assert_allclose(as_tensor.numpy(), whole, rtol=1e-6)
    assert simulate(params[0]).shape == (1, 64, 64)


# the published sets plus the centre, the training-range corners and tilts that push the box off the pupil grid
FAST_PATH_SETS = PARAM_SETS + [(0.0, 0.0, 0.0, 117.0), (0.005, 0.05, -0.1, 300.0), (-0.005, -0.05, 0.1, 60.0),
                               (0.001, 0.15, -0.25, 117.0), (-0.002, -0.2, 0.3, 90.0)]


@pytest.mark.parametrize("counts", [None, "published", 70.0])
def test_simulate_box_fast_path_matches_simulate(counts):
    rng = np.random.default_rng(5)
    random = np.column_stack([rng.uniform(-5e-3, 5e-3, 64), rng.uniform(-0.05, 0.05, 64),
                              rng.uniform(-0.1, 0.1, 64), rng.uniform(60, 300, 64)])
    params = np.vstack([FAST_PATH_SETS, random])
    expected = simulate(params, counts=counts)
    fast = simulate_box(params, counts=counts)
    assert fast.dtype == np.float32 and fast.shape == expected.shape and expected.max() > 0
    np.testing.assert_allclose(fast, expected, rtol=1e-6, atol=0)  # also zero exactly where simulate is
    exact = simulate(params, counts=counts, dtype=torch.float64)
    assert np.abs(fast - exact).max() / exact.max() <= 1e-6
    for i, row in enumerate(params[:len(FAST_PATH_SETS)]):  # one pattern at a time, and batches split anywhere
        np.testing.assert_array_equal(simulate_box(row, counts=counts)[0], fast[i])
    np.testing.assert_array_equal(simulate_box(params, counts=counts, batch_size=3), fast)


def test_simulate_box_reproduces_published_reference_patterns_and_rejects_bad_params():
    ref = np.load(REFERENCE)
    got = simulate_box(ref["params"])
    assert np.abs(got - ref["images"]).max() / ref["images"].max() <= 1e-6
    np.testing.assert_array_equal(simulate_box(np.zeros((2, 3))), simulate_box([[0, 0, 0, INSTRUMENT.thickness]] * 2))
    for bad, message in [(np.zeros((2, 5)), r"\(N, 3\) or \(N, 4\)"), (np.array([[np.nan, 0, 0]]), "NaN"),
                         (np.array([[0, 0, 0, -5.0]]), "thickness"), (np.array([[-1.0, 0, 0]]), "strain")]:
        with pytest.raises(ValueError, match=message):
            simulate_box(bad)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 5)), r"\(N, 3\) or \(N, 4\)"),
    (np.zeros((2, 3, 1)), r"\(N, 3\) or \(N, 4\)"),
    (np.array([[np.nan, 0, 0]]), "NaN"),
    (np.array([[0, 0, 0, -5.0]]), "thickness"),
])
def test_simulate_rejects_bad_params(bad, message):
    with pytest.raises(ValueError, match=message):
        simulate(bad)


def test_simulate_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel"):
        simulate(np.zeros((1, 3)), kernel="lorentz")


def test_poisson_is_seeded_and_unbiased():
    rate = simulate(np.zeros((200, 3)), counts="published")
    a, b = poisson(rate, seed=3), poisson(rate, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, poisson(rate, seed=4))
    assert (a == np.round(a)).all() and (a >= 0).all()
    assert a.sum() == pytest.approx(rate.sum(), rel=0.02)
    with pytest.raises(ValueError, match="non-negative"):
        poisson(-rate)


def test_the_known_brightest_grid_peak_is_the_searched_one():
    instrument = Instrument()
    assert search_brightest_grid_peak(instrument) == pytest.approx(KNOWN_GRID_PEAKS[instrument.fingerprint()],
                                                                   rel=1e-12)


def test_another_setup_is_searched_once(monkeypatch):
    from nanopilot.physics import intensity

    searched = []
    monkeypatch.setattr(intensity, "search_brightest_grid_peak",
                        lambda instrument, progress: searched.append((instrument, progress)) or 1000.0)
    other = dataclasses.replace(Instrument(), thickness=123.456)
    intensity.brightest_grid_peak.cache_clear()
    try:
        assert intensity_scale(other, 10.0) == pytest.approx(0.01)
        assert intensity_scale(other, 20.0) == pytest.approx(0.02)
        assert brightest_grid_peak(Instrument()) == KNOWN_GRID_PEAKS[Instrument().fingerprint()]
    finally:
        intensity.brightest_grid_peak.cache_clear()
    assert searched == [(other, True)]  # once, with a progress bar; the published setup's is known

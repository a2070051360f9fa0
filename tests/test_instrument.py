"""The Instrument: defaults, validation, serialisation, fingerprint."""

import dataclasses
import math

import pytest

from nanopilot.physics import Instrument


def test_defaults_are_the_published_setup():
    inst = Instrument()
    assert inst.wavelength == pytest.approx(1.09717, abs=1e-5)
    assert inst.roi_shape == (64, 64)
    assert inst.theta_out == pytest.approx(149e-6 / (2 * 21.874e-3))
    assert inst.g == pytest.approx(2 * math.pi * 2 / 4.013)


@pytest.mark.parametrize("field, value", [
    ("energy_kev", -1.0), ("lattice_c", 0.0), ("thickness", float("nan")), ("detector_distance", "far"),
    ("reflection_l", 0), ("pupil_size", 2.5), ("box_precision", -5e-4),
])
def test_bad_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"Instrument.{field}"):
        Instrument(**{field: value})


def test_cross_field_checks_name_the_field():
    with pytest.raises(ValueError, match="central_stop_diameter"):
        Instrument(central_stop_diameter=200e-6)
    with pytest.raises(ValueError, match="energy_kev"):
        Instrument(energy_kev=1.0)  # no Bragg reflection possible
    with pytest.raises(ValueError, match="pupil_size"):
        Instrument(pupil_size=64)  # the cone does not fit the pupil grid
    with pytest.raises(ValueError, match="roi_shape"):
        Instrument(roi_shape=(64,))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_file_round_trip(tmp_path, suffix):
    inst = Instrument(energy_kev=10.0, thickness=150.0, roi_shape=(48, 64))
    path = tmp_path / f"instrument{suffix}"
    inst.save(path)
    again = Instrument.load(path)
    assert again == inst and again.fingerprint() == inst.fingerprint()


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="energy_ev"):
        Instrument.from_dict({"energy_ev": 11300})


def test_fingerprint_identifies_the_setup():
    a, b = Instrument(), Instrument()
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    c = dataclasses.replace(a, detector_distance=0.9)
    assert c.fingerprint() != a.fingerprint()
    assert a.differences(c) == {"detector_distance": (0.85, 0.9)}
    with pytest.raises(ValueError, match="detector_distance"):
        a.require_same(c, "model file")


def test_the_strain_per_pixel_is_the_forward_models_qz_step_at_the_roi_centre():
    from nanopilot.physics.forward import _geometry

    instrument = Instrument()
    qz = _geometry(instrument)["qz"]
    centre = len(qz) // 2
    step = qz[centre] - qz[centre - 1]  # 1/angstrom per pixel along detector x
    assert instrument.strain_per_pixel == pytest.approx(-step / instrument.g, rel=1e-3)
    assert instrument.strain_per_pixel < 0 and abs(instrument.strain_per_pixel) == pytest.approx(2.28e-4, rel=0.01)

"""Simulated libraries: grids, HDF5 files, the instrument guard, the CLI."""

import json

import h5py
import numpy as np
import pytest

from nanopilot.cli import main
from nanopilot.physics import Grid, Instrument, Library, intensity_scale, simulate

SMALL = "strain=-0.005:0.005:5,omega=-0.05:0.05:3,chi=-0.1:0.1:7"


def test_grid_parse_and_order():
    grid = Grid.parse(SMALL + ",thickness=60:300:4")
    assert grid.order == ("thickness", "strain", "omega", "chi")
    assert grid.shape == (4, 5, 3, 7) and grid.size == 420
    params = grid.params()
    assert params.shape == (420, 4)
    # chi fastest, thickness slowest
    np.testing.assert_allclose(params[:7, 2], np.linspace(-0.1, 0.1, 7))
    assert (params[:105, 3] == 60).all() and (params[-105:, 3] == 300).all()
    assert Grid.default().shape == (41, 41, 41)
    assert Grid.default().strain.step == pytest.approx(2.5e-4)


@pytest.mark.parametrize("spec", ["strain=1:2", "tilt=0:1:3", "chi=0.1:-0.1:5", "omega=0:1:0"])
def test_grid_parse_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        Grid.parse(spec)


@pytest.mark.parametrize("kernel", ["box", "gauss"])
def test_library_file_holds_simulated_patterns(tmp_path, kernel):
    grid = Grid.parse(SMALL + ",thickness=80:200:2")
    lib = Library.generate(tmp_path / "lib.h5", grid, kernel=kernel, progress=False)
    assert len(lib) == grid.size
    np.testing.assert_array_equal(lib.params, grid.params())
    expected = simulate(lib.params, kernel=kernel, counts="published")
    chunks = [block for _, block in lib.iter_chunks(size=50)]
    np.testing.assert_allclose(np.concatenate(chunks), expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert lib.scale == pytest.approx(intensity_scale(Instrument(), "published"))
    with h5py.File(lib.path) as f:
        assert Instrument.from_json(f.attrs["instrument"]) == Instrument()
        assert json.loads(f.attrs["order"]) == list(grid.order)
        assert f.attrs["kernel"] == kernel and f.attrs["nanopilot_version"]
    lib.close()


def test_library_refuses_another_instrument(tmp_path):
    Library.generate(tmp_path / "lib.h5", Grid.parse(SMALL), progress=False).close()
    assert len(Library.load(tmp_path / "lib.h5", Instrument())) == 105
    with pytest.raises(ValueError, match="energy_kev"):
        Library.load(tmp_path / "lib.h5", Instrument(energy_kev=12.0))


def test_library_refuses_a_file_that_is_not_a_library(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5"):
        Library.load(tmp_path / "junk.h5")


def test_cli_library(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert main(["library", "--grid", SMALL, "--out", str(out), "--counts", "raw"]) == 0
    assert "105 patterns" in capsys.readouterr().out
    with Library.load(out) as lib:
        assert lib.counts is None and lib.scale == 1.0
        np.testing.assert_allclose(lib.images[:3], simulate(lib.params[:3]), rtol=1e-5)
    assert main(["library", "--grid", "strain=bad", "--out", str(out)]) == 1

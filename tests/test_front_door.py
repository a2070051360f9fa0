"""The command line's front door: ``nanopilot --help`` without the heavy imports, commands without start-up noise."""

import subprocess
import sys

import pytest


def python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (warnings shown), as a command would."""
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300)


def test_building_the_parser_imports_neither_torch_nor_the_bluesky_stack():
    done = python("import sys, nanopilot.cli; nanopilot.cli.build_parser(); "
                  "print([m for m in ('torch', 'bluesky', 'ophyd', 'tiled', 'databroker') if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_fit_method_choices_are_the_fitting_methods():
    from nanopilot.cli.fit import METHODS
    from nanopilot.fitting import METHODS as FITTING_METHODS

    assert METHODS == FITTING_METHODS


@pytest.mark.slow  # run by .ci/run's second pass
def test_opening_the_embedded_catalogue_prints_nothing(catalog, catalog_dir):
    """No Starlette deprecation warning and no "Tiled version ..." line (the session's catalogue, reopened)."""
    done = python(f"from nanopilot.catalog import open_catalog; print(type(open_catalog({str(catalog_dir)!r})))")
    assert done.returncode == 0, done.stderr
    assert "CatalogOfBlueskyRuns" in done.stdout
    assert done.stderr == ""

"""Shared fixtures: one embedded Tiled catalogue per test session (its init costs seconds)."""

import pytest


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory):
    """Directory of the session's embedded catalogue; external files must lie under it (readable storage)."""
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture(scope="session")
def catalog(catalog_dir):
    """The session's embedded catalogue of Bluesky runs (in-process Tiled app, SQLite tables)."""
    from nanopilot.catalog import open_catalog

    return open_catalog(catalog_dir)

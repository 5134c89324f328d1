from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_compile_cache(tmp_path_factory):
    """Tests compile into their own cache (hermetic; compiled models are still shared within the session, and
    between the session's pytest-xdist workers, whose temporary folders share a parent)."""
    import os

    old = os.environ.get("FORECASTER_CACHE")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    (base / "compile-cache").mkdir(mode=0o700, exist_ok=True)  # the cache refuses folders others can write
    os.environ["FORECASTER_CACHE"] = str(base / "compile-cache")
    yield
    if old is None:
        os.environ.pop("FORECASTER_CACHE", None)
    else:
        os.environ["FORECASTER_CACHE"] = old


@pytest.fixture(scope="session")
def demo_table():
    from forecaster.data import validate
    from forecaster.simulate import demo_data

    return validate(demo_data(), source="demo")


@pytest.fixture(scope="session")
def tiny_fit(demo_table):
    """A tiny fit of the demo data (few draws: for pipeline tests, not for inference)."""
    from forecaster.fit import fit

    return fit(demo_table, seed=3, draws=60, tune=60, chains=2)


@pytest.fixture(scope="session")
def tiny_fit_file(tiny_fit, tmp_path_factory):
    from forecaster.io import save_fit

    path = tmp_path_factory.mktemp("fit") / "tiny.nc"
    save_fit(tiny_fit, path)
    return path

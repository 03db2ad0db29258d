"""Shared test settings: deterministic CPU runs with few threads (the CI machine has 2 cores)."""

import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _two_torch_threads():
    """Every test starts with the 2 threads above: the runners and CLI commands run in-process set
    the process's thread count (``--threads``), which would otherwise leak into later tests."""
    torch.set_num_threads(2)
    yield


@pytest.fixture
def native_kernel():
    """The compiled local-window kernel; skips (fails with ``CI=true``) where it cannot be built."""
    from gsa_search.blocks import _window

    if not _window.native_available():
        reason = f"compiled window kernel unavailable: {_window._failed or 'GSA_SEARCH_NATIVE=0'}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


# Fixtures for real services (PostgreSQL) and for `gsa-search` run as processes: see tests/services.py.
from services import fresh_postgres_database, gsa, postgres_study, postgres_url, study_name  # noqa: E402,F401
from services import ray_address  # noqa: E402,F401

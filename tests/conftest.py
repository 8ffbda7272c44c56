"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder: ``$PFADSEG_SHARED_DATA``, else ``<repo>/../shared/data``.

    Missing data skips the test, except under CI (``$CI`` set), where it is an error.
    """
    env = os.environ.get("PFADSEG_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        reason = f"shared data folder not found at {path} (set PFADSEG_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must have it")
        pytest.skip(reason)
    return path

"""Test-session settings: the quick profile, a private cache, no progress bars in unit tests.

Notebooks executed by nbval inherit this environment, so they run in the quick profile too.
"""
import os
import tempfile

os.environ.setdefault("CNNLIB_PROFILE", "quick")
os.environ.setdefault("CNNLIB_CACHE", tempfile.mkdtemp(prefix="cnnlib-test-cache-"))
os.environ.setdefault("CNNLIB_OFFLINE", "1")  # tests never try to download anything

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # only this process; notebook kernels keep the inline backend

import pytest  # noqa: E402


@pytest.fixture
def quiet(monkeypatch):
    """No progress bars in unit tests."""
    monkeypatch.setenv("CNNLIB_PROGRESS", "0")


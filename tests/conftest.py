"""Shared test settings: a bounded hypothesis budget for CI and a slower profile for long runs."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BEAVER_* variables from the caller, and a working directory without configs/ (built-in
    defaults + flags). Modules that run the CLI use it with `pytest.mark.usefixtures("clean_env")`."""
    for name in list(os.environ):
        if name.startswith("BEAVER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

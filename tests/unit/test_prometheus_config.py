"""configs/prometheus.yml: valid YAML that scrapes the metrics address configs/default.yaml gives
`beaver run`, and (when promtool is installed) a config Prometheus itself accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from beaver_sim.config import load_config

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO / "configs" / "prometheus.yml"


def test_scrapes_the_default_metrics_address_of_beaver_run() -> None:
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())
    defaults = load_config(str(REPO / "configs" / "default.yaml"), {})
    (job,) = scrape["scrape_configs"]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"{defaults.metrics_host}:{defaults.metrics_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"  # beaver serves plain HTTP


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_it() -> None:
    out = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr

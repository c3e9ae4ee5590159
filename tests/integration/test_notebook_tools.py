"""The notebooks open the way learners expect: JupyterLab (installed by `make setup`) serves the
notebooks directory over its REST API, and papermill reruns an experiment notebook with other
values for its `parameters` cell."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jupyter_env(tmp_path: Path) -> dict[str, str]:
    """Jupyter's config, data, runtime and workspace files go to tmp_path, not the user's home."""
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        env[var] = str(tmp_path / var.lower())
    return env


def test_jupyterlab_lists_the_notebooks(tmp_path: Path) -> None:
    port, token = free_port(), secrets.token_hex(16)
    argv = [
        *(sys.executable, "-m", "jupyterlab", "--no-browser"),
        *("--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"),
        *(f"--ServerApp.root_dir={ROOT}", f"--IdentityProvider.token={token}"),
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
    ]
    log = (tmp_path / "lab.log").open("w")
    lab = subprocess.Popen(
        argv, env=jupyter_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/api/contents/notebooks"
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    listing = None
    try:
        deadline = time.monotonic() + 90
        while listing is None:
            assert lab.poll() is None, f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "jupyter lab did not answer within 90 s"
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    listing = json.load(reply)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        names = {item["name"]: item["type"] for item in listing["content"]}
        suite = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
        assert len(suite) >= 9 and all(names.get(n) == "notebook" for n in suite), names
        refused = urllib.request.Request(url, headers={"Authorization": "token wrong"})
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(refused, timeout=5)
        assert denied.value.code == 403
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGTERM)  # its own session: nothing it started outlives it
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(lab.pid, signal.SIGKILL)
                lab.wait()
        log.close()


def test_papermill_reruns_a_notebook_with_other_parameters(tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "00-tour.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "00-tour.ipynb"),
        str(out),
        parameters={"JOBS": 7, "WORKERS": 2},
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    cells = json.loads(out.read_text())["cells"]
    text = "".join(
        "".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
    )
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "JOBS = 7" in "".join(injected[0]["source"])
    assert "'jobs': 7," in text and "acknowledged: 7 at t = 0.0 | fsyncs for 9 records" in text, text[:2000]
    stored = (NOTEBOOKS / "00-tour.ipynb").read_text()
    assert "acknowledged: 20 at t = 0.0 | fsyncs for 24 records" in stored  # the stored run differs

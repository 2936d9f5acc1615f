"""`make lab`: JupyterLab, installed by the set-up, serves the notebooks with the widget and Plotly extensions."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
pytestmark = pytest.mark.slow


def test_jupyterlab_serves_the_notebooks_with_their_extensions(tmp_path):
    extensions = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
    listed = extensions.stdout + extensions.stderr
    assert "@jupyter-widgets/jupyterlab-manager" in listed and "jupyterlab-plotly" in listed, listed
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", f"--notebook-dir={NOTEBOOKS}", "--IdentityProvider.token=lab-test"]  # fmt: skip
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        contents, deadline = None, time.time() + 60
        while contents is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token=lab-test", timeout=5) as reply:
                    contents = json.load(reply)
            except OSError:
                time.sleep(0.5)
        assert contents is not None, "JupyterLab did not answer within 60 s"
        served = {item["name"] for item in contents["content"] if item["type"] == "notebook"}
        assert served == {path.name for path in NOTEBOOKS.glob("*.ipynb")}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=lab-test", timeout=10) as page:
            assert page.status == 200 and b"JupyterLab" in page.read()
    finally:
        server.terminate()
        server.wait(timeout=30)

"""asv's published HTML works with no network once ``.ci/asv_offline.py`` has copied its
JavaScript and CSS from npm packages into the html directory: headless Chromium, with
every host but this one unreachable, renders the benchmark graphs (and, as published by
asv alone, does not)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs it with apt)"),
    pytest.mark.skipif(shutil.which("npm") is None, reason="no npm to fetch asv's JS/CSS with"),
]


OFFLINE = REPO / ".ci" / "asv_offline.py"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The npm packages' cache (``.ci/run`` fills it before the tests, which need no
    network then); filled here if it is empty and npm can reach its registry."""
    cache = REPO / ".asv" / "vendor" / "node_modules"
    if not (cache / "jquery" / "dist" / "jquery.min.js").exists():
        proc = subprocess.run(
            [sys.executable, str(OFFLINE), "--fetch"], capture_output=True, text=True, timeout=600
        )
        if proc.returncode:
            pytest.skip(f"asv's JS/CSS not cached and npm cannot fetch it: {proc.stderr[-300:]}")
    return cache


def _asv(tmp_path: Path, *args: str) -> None:
    """asv with ``tmp_path`` as HOME: its machine file (``~/.asv-machine.json``) is made
    there, so a fresh machine needs none and the user's is left alone."""
    proc = subprocess.run(
        [sys.executable, "-m", "asv", *args, "--config", str(tmp_path / "asv.conf.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, in Chromium that can reach only 127.0.0.1."""
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--proxy-server=http://127.0.0.1:9",  # a dead proxy for every host but loopback
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1200,2000",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_published_asv_html_renders_graphs_offline(tmp_path, node_modules):
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    conf = {
        "version": 1,
        "project": "mmbench",
        "project_url": "https://example.invalid/mmbench",
        "repo": str(REPO),
        "branches": ["HEAD"],
        "environment_type": "existing",
        "benchmark_dir": str(REPO / "benchmarks"),
        "env_dir": str(tmp_path / "env"),
        "results_dir": str(tmp_path / "results"),
        "html_dir": str(tmp_path / "html"),
    }
    (tmp_path / "asv.conf.json").write_text(json.dumps(conf))
    _asv(tmp_path, "machine", "--yes")
    _asv(tmp_path, "run", "--python=same", "--quick", f"--set-commit-hash={head}",
         "--bench", "ReclaimModelled.track_faults")  # fmt: skip
    _asv(tmp_path, "publish")
    html = tmp_path / "html"
    server, url = _serve(html)
    try:
        online_only = _dom(url + "index.html", tmp_path / "profile0")
        assert "flot-base" not in online_only  # the CDNs are unreachable: nothing drawn
        proc = subprocess.run(
            [sys.executable, str(OFFLINE), "--no-publish", "--vendor", str(node_modules),
             "--config", str(tmp_path / "asv.conf.json")],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        index = (html / "index.html").read_text()
        assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', index)
        dom = _dom(url + "index.html", tmp_path / "profile1")
        grid = re.findall(r'class="benchmark-plot".*?</div>', dom, re.S)
        assert grid and "flot-base" in dom, dom[:3000]  # the summary grid's graphs
        bench = _dom(url + "index.html#bench_reclaim.ReclaimModelled.track_faults", tmp_path / "p2")
        assert bench.count("<canvas") >= 2 and "fifo" in bench  # the history graph, legend
    finally:
        server.shutdown()

#!/usr/bin/env python3
"""Publish asv's HTML so it works with no network: ``asv publish``, then the JavaScript
and CSS its index.html loads from CDNs (jQuery, flot and its plugins, stupidtable,
blueimp-md5, bootstrap) are copied from npm packages into ``HTML_DIR/vendor/`` and the
page's ``<script>``/``<link>`` tags point there.

    python3 .ci/asv_offline.py                 # publish .asv/html, fetch with npm once
    python3 .ci/asv_offline.py --vendor DIR    # an existing node_modules (offline host)
    python3 .ci/asv_offline.py --fetch         # only fill the npm cache (CI, before tests)
    python3 -m asv preview                     # or any static server of .asv/html

The npm packages are installed once into ``.asv/vendor`` (``npm install --prefix``); on
an offline host, pass ``--vendor`` a node_modules directory installed elsewhere with
``npm install`` of the packages in ``PACKAGES``. Exits 1 naming what is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".asv" / "vendor"  # npm --prefix: CACHE/node_modules
# the npm package (at the version asv's index.html names, or the nearest on npm) for each
# CDN file asv loads, and the file inside it
PACKAGES = {
    "jquery": "3.3.1",
    "flot": "0.8.3",
    "flot-orderbars": "1.0.0",
    "stupid-table-plugin": "1.1.3",  # asv names 1.0.1, which npm does not have
    "blueimp-md5": "2.19.0",
    "bootstrap": "3.1.1",
}
FILES = {
    "jquery-3.3.1.min.js": "jquery/dist/jquery.min.js",
    "jquery.flot.min.js": "flot/jquery.flot.js",
    "jquery.flot.time.min.js": "flot/jquery.flot.time.js",
    "jquery.flot.selection.min.js": "flot/jquery.flot.selection.js",
    "jquery.flot.categories.min.js": "flot/jquery.flot.categories.js",
    "jquery.flot.orderBars.js": "flot-orderbars/js/jquery.flot.orderBars.js",
    "stupidtable.min.js": "stupid-table-plugin/stupidtable.min.js",
    "md5.min.js": "blueimp-md5/js/md5.min.js",
    "bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
}
EXTRA = ["bootstrap/dist/fonts"]  # bootstrap.min.css refers to ../fonts/
TAG = re.compile(r'<(script|link)\b[^>]*?(?:src|href)="(https?://[^"]+)"[^>]*>')


def npm_install(vendor: Path) -> Path:
    """``vendor/node_modules`` with every package, installed by npm if not there yet."""
    modules = vendor / "node_modules"
    if all((modules / rel).exists() for rel in FILES.values()):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("asv_offline: npm is not installed; pass --vendor NODE_MODULES")
    vendor.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(vendor), *specs]
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode:
        sys.exit(f"asv_offline: {' '.join(cmd)} failed")
    return modules


def localize(html_dir: Path, modules: Path) -> list[str]:
    """Copy the files into ``html_dir/vendor`` and point index.html at them; returns the
    local paths now used."""
    index = html_dir / "index.html"
    text = index.read_text(encoding="utf-8")
    used = []

    def local(m: re.Match) -> str:
        tag, url = m.group(1), m.group(2)
        name = url.rsplit("/", 1)[-1]
        if name not in FILES:
            sys.exit(f"asv_offline: index.html loads {url}, which has no local copy here")
        src = modules / FILES[name]
        if not src.exists():
            sys.exit(f"asv_offline: {src} is missing (npm install {' '.join(PACKAGES)})")
        dest = html_dir / "vendor" / FILES[name]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        rel = f"vendor/{FILES[name]}"
        used.append(rel)
        if tag == "script":
            return f'<script src="{rel}" onerror="js_load_failure()">'
        return f'<link rel="stylesheet" href="{rel}">'

    text = TAG.sub(local, text)
    for rel in EXTRA:
        src = modules / rel
        if src.is_dir():
            shutil.copytree(src, html_dir / "vendor" / rel, dirs_exist_ok=True)
    left = TAG.findall(text)
    if left:
        sys.exit(f"asv_offline: still loaded from the network: {', '.join(u for _, u in left)}")
    index.write_text(text, encoding="utf-8")
    return used


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "asv.conf.json"), help="asv config")
    ap.add_argument("--html-dir", help="asv's html_dir (default: the config's)")
    ap.add_argument("--vendor", help="a node_modules directory with the packages")
    ap.add_argument("--no-publish", action="store_true", help="only localize an html dir")
    ap.add_argument(
        "--fetch", action="store_true", help=f"only install the npm packages into {CACHE}"
    )
    args = ap.parse_args(argv)
    if args.fetch:
        print(f"asv_offline: packages in {npm_install(CACHE)}")
        return 0
    conf_path = Path(args.config)
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    html_dir = Path(args.html_dir or conf_path.parent / conf.get("html_dir", "html"))
    if not args.no_publish:
        cmd = [sys.executable, "-m", "asv", "publish", "--config", str(conf_path)]
        if subprocess.run(cmd).returncode:
            return 1
    modules = Path(args.vendor) if args.vendor else npm_install(CACHE)
    used = localize(html_dir, modules)
    print(f"asv_offline: {html_dir}/index.html loads {len(used)} files from vendor/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

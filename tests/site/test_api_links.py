"""The site's links into the kdimpl API reference land on documented objects (a Sphinx build of ``docs/``).

The build runs on a copy of ``docs/`` (autosummary writes its pages into the source folder) and
without ``-W``: CI's ``python -m sphinx -W`` step is what fails on warnings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.catalog.repo import REPO
from tests.site.sitebuild import build_site, require_minisearch

pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[docs]')")
pytest.importorskip("torch", reason="the API reference imports kdimpl, which needs torch")

HREF = re.compile(r'href="api/([^"#]+)#([^"]+)"')


def test_every_api_link_of_the_real_site_lands_on_an_object(tmp_path):
    require_minisearch()
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "docs", repo / "docs", ignore=shutil.ignore_patterns("kdimpl*.rst", "_build"))
    for name in ("kdimpl", "node_modules"):
        os.symlink(REPO / name, repo / name, target_is_directory=True)
    out = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(repo / "docs"), str(out / "api")],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    index = build_site(REPO, out)
    links = set(HREF.findall(index.read_text(encoding="utf-8")))
    assert links, "the real catalog links some implementations to the API reference"
    missing = []
    for page, anchor in sorted(links):
        target = out / "api" / page
        if not target.is_file() or f'id="{anchor}"' not in target.read_text(encoding="utf-8"):
            missing.append(f"{page}#{anchor}")
    assert missing == []
    assert (out / "api" / "_static" / "mathjax" / "tex-svg.js").is_file(), "MathJax is served with the pages"
    assert (out / "api" / "index.html").is_file()

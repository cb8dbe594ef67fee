"""The kdimpl API reference (a Sphinx build of ``docs/``): the site's links land on documented objects,
and the equations render in a browser from the pages' own MathJax.

The site is built from the core fixture's papers, one of which lists every registered loss of the
real kdimpl, so the links cover every loss whatever papers/ holds.

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

import yaml

from tests.catalog.repo import REPO
from tests.site.browser import launched, watched_page
from tests.site.sitebuild import build_site, make_site_repo, require_minisearch

pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[docs]')")
pytest.importorskip("torch", reason="the API reference imports kdimpl, which needs torch")

HREF = re.compile(r'href="api/([^"#]+)#([^"]+)"')


def _repo_listing_every_loss(tmp):
    """The site fixture repository with the real kdimpl, one paper listing every registered loss."""
    import kdimpl

    root = make_site_repo(tmp)
    shutil.rmtree(root / "kdimpl")
    os.symlink(REPO / "kdimpl", root / "kdimpl", target_is_directory=True)
    for path in sorted((root / "papers").glob("[!_]*.yaml")):  # the toy implementations are gone
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data.pop("implementations", None)
        if path.stem == "alpha":
            data["implementations"] = [{"name": kdimpl.get_loss(name).__name__, "verification": "unverified"}
                                       for name in kdimpl.list_losses()]
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A site whose papers link every registered loss, with the API reference in its ``api/`` folder."""
    require_minisearch()
    tmp = tmp_path_factory.mktemp("api")
    repo = tmp / "repo"
    shutil.copytree(REPO / "docs", repo / "docs", ignore=shutil.ignore_patterns("kdimpl*.rst", "_build"))
    for name in ("kdimpl", "node_modules"):
        os.symlink(REPO / name, repo / name, target_is_directory=True)
    out = tmp / "site"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(repo / "docs"), str(out / "api")],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    build_site(_repo_listing_every_loss(tmp / "catalog"), out)
    return out


def test_every_api_link_lands_on_an_object(built):
    import kdimpl

    links = set(HREF.findall((built / "index.html").read_text(encoding="utf-8")))
    assert len(links) >= len(kdimpl.list_losses()), "every registered loss is linked to the API reference"
    missing = []
    for page, anchor in sorted(links):
        target = built / "api" / page
        if not target.is_file() or f'id="{anchor}"' not in target.read_text(encoding="utf-8"):
            missing.append(f"{page}#{anchor}")
    assert missing == []
    assert (built / "api" / "index.html").is_file()


def test_equations_render_from_the_pages_own_mathjax(built):
    assert (built / "api" / "_static" / "mathjax" / "tex-svg.js").is_file(), "MathJax is served with the pages"
    with_math = [path for path in sorted((built / "api").glob("kdimpl.*.html"))
                 if 'class="math' in path.read_text(encoding="utf-8")]
    assert with_math, "the docstrings state equations"
    page_path = with_math[0]
    with launched() as browser, watched_page(browser) as (page, errors):
        page.goto(page_path.as_uri())
        page.wait_for_selector("mjx-container svg", timeout=30_000)
        assert page.locator("mjx-container").count() > 0
        assert errors == []

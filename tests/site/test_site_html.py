"""The generated page without a browser: anchors, the embedded JSON, escaping, links, all-or-nothing writes."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from catalog import site
from catalog.model import Catalog, CodeLink, Implementation, Link, NoImplementation, Paper, Section
from tests.catalog.repo import REPO, run_module
from tests.site.sitebuild import FIXTURE_IDS, build_site, make_site_repo, require_minisearch


class Page(HTMLParser):
    """Every element's tag and attributes, and the text of each ``<script>``."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data

    def ids(self) -> list[str]:
        return [attrs["id"] for _, attrs in self.elements if "id" in attrs]

    def records(self) -> list[dict]:
        (index,) = [i for i, (tag, attrs) in enumerate(e for e in self.elements if e[0] == "script")
                    if attrs.get("id") == "site_data"]
        return json.loads(self.scripts[index])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Page]:
    tmp = tmp_path_factory.mktemp("site")
    root = make_site_repo(tmp)
    index = build_site(root, tmp / "out")
    return tmp / "out", Page(index.read_text(encoding="utf-8"))


def test_every_paper_is_an_anchored_article(built):
    out, page = built
    articles = [attrs["id"] for tag, attrs in page.elements if tag == "article"]
    assert sorted(articles) == sorted(FIXTURE_IDS)
    ids = page.ids()
    assert len(ids) == len(set(ids)), "element ids are unique"
    assert {f"#{paper}" for paper in FIXTURE_IDS} <= {attrs.get("href") for _, attrs in page.elements}
    assert sorted(path.name for path in out.iterdir()) == ["index.html", "minisearch.js", "site.css", "site.js"]


def test_the_embedded_json_describes_every_paper(built):
    _, page = built
    records = {record["id"]: record for record in page.records()}
    assert set(records) == FIXTURE_IDS
    alpha = records["alpha"]
    assert alpha["method"] == "ALPHA" and alpha["year"] == 2022 and alpha["venue"] == "CVPR"
    assert alpha["official"] is True and alpha["levels"] == ["parity"]
    assert alpha["sections"] == ["general", "features", "masks", "teacher-free"]  # ancestors included
    assert records["beta"]["levels"] == [] and records["gamma"]["official"] is False


def test_implementations_link_to_the_api_reference_and_the_source(built):
    _, page = built
    hrefs = {attrs.get("href") for _, attrs in page.elements}
    assert "api/kdimpl.losses.toy.html#kdimpl.losses.toy.ToyLoss" in hrefs
    assert "api/kdimpl.losses.toy.html#kdimpl.losses.toy.toy_loss" in hrefs
    assert f"{site.REPOSITORY}/blob/main/kdimpl/losses/toy.py" in hrefs
    assert "https://github.com/example/alpha" in hrefs


def test_api_base_and_repository_options(tmp_path):
    root = make_site_repo(tmp_path)
    index = build_site(root, tmp_path / "out", "--api-base", "https://example.org/kdimpl", "--repository",
                       "https://example.org/repo/")
    hrefs = {attrs.get("href") for _, attrs in Page(index.read_text(encoding="utf-8")).elements}
    assert "https://example.org/kdimpl/kdimpl.losses.toy.html#kdimpl.losses.toy.ToyLoss" in hrefs
    assert "https://example.org/repo/blob/main/kdimpl/losses/toy.py" in hrefs


def test_api_target():
    assert site.api_target("FGDLoss", "kdimpl/losses/fgd.py") == "kdimpl.losses.fgd.html#kdimpl.losses.fgd.FGDLoss"
    assert site.api_target("build_loss", "kdimpl/__init__.py") == "kdimpl.html#kdimpl.build_loss"


HOSTILE = "</script><script>alert(1)</script> <img src=x onerror=alert(2)> & \"quotes\" 'too'"


def test_text_cannot_inject_html(tmp_path):
    """The loader rejects HTML in the data; the page escapes it anyway (data and attributes)."""
    require_minisearch()
    paper = Paper(
        id="evil", title=HOSTILE, authors=(HOSTILE,), year=2020, sections=("s",), description=HOSTILE,
        links=(Link("arxiv", "https://arxiv.org/abs/2001.00001?a=1&b=\"><script>", HOSTILE),
               Link("other", "javascript:alert(3)", "bad scheme")),
        method=HOSTILE, venue=HOSTILE, code=(CodeLink("https://github.com/x/y", HOSTILE),),
        implementations=(Implementation("ToyLoss", "parity"),),
    )
    catalog = Catalog(papers=(paper,), sections=(Section("s", HOSTILE, 2),))
    (tmp_path / "node_modules").symlink_to(REPO / "node_modules", target_is_directory=True)
    shutil.copy(REPO / "package.json", tmp_path / "package.json")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    files = site.render_site(catalog, tmp_path, {"ToyLoss": "kdimpl/losses/toy.py"})
    page = Page(files["index.html"])
    scripts = [attrs for tag, attrs in page.elements if tag == "script"]
    assert [attrs.get("id") or attrs.get("src") for attrs in scripts] == ["site_data", "minisearch.js", "site.js"]
    assert not [tag for tag, _ in page.elements if tag == "img"]
    assert not any("onerror" in attrs for _, attrs in page.elements)
    assert page.records()[0]["title"] == HOSTILE
    hrefs = [attrs["href"] for tag, attrs in page.elements if tag == "a"]
    assert "https://arxiv.org/abs/2001.00001?a=1&b=\"><script>" in hrefs  # one attribute value, unchanged
    assert not any(href.startswith("javascript:") for href in hrefs)


def test_a_load_error_writes_no_site(tmp_path):
    root = make_site_repo(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("old", encoding="utf-8")
    (root / "papers" / "beta.yaml").write_text("title: [unclosed\n", encoding="utf-8")
    result = run_module("site", "--root", str(root), "--out", str(out))
    assert result.returncode == 1
    assert "papers/beta.yaml" in result.stdout and "no site was written" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["index.html"]
    assert (out / "index.html").read_text(encoding="utf-8") == "old"


def test_without_minisearch_the_command_says_to_run_npm_ci(tmp_path):
    root = make_site_repo(tmp_path)
    (root / "node_modules" / "minisearch").unlink()
    result = run_module("site", "--root", str(root), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "npm ci" in result.stderr and "no site was written" in result.stderr
    assert not (tmp_path / "out").exists()


def test_minisearch_must_match_the_pinned_version(tmp_path):
    root = make_site_repo(tmp_path)
    manifest = json.loads((root / "package.json").read_text(encoding="utf-8"))
    manifest.setdefault("dependencies", {})["minisearch"] = "0.0.1"
    (root / "package.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = run_module("site", "--root", str(root), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "0.0.1" in result.stderr and "npm ci" in result.stderr


def test_the_real_catalog_builds(tmp_path):
    """Only that it builds and lists one article per paper file (the content is not pinned)."""
    require_minisearch()
    index = build_site(REPO, tmp_path / "out")
    page = Page(index.read_text(encoding="utf-8"))
    papers = [path for path in (REPO / "papers").glob("*.yaml") if not path.name.startswith("_")]
    assert len([tag for tag, _ in page.elements if tag == "article"]) == len(papers)
    assert len(page.records()) == len(papers)


def test_a_journal_extension_and_its_conference_paper_point_to_each_other():
    def paper(paper_id: str, venue: str, year: int, extends: str | None = None) -> Paper:
        return Paper(id=paper_id, title=f"{paper_id} title", authors=("A B",), year=year, sections=("s",),
                     description="D.", links=(), method="LD", venue=venue, extends=extends)

    catalog = Catalog(papers=(paper("ld", "CVPR", 2022), paper("ld-tpami", "TPAMI", 2023, "ld")),
                      sections=(Section("s", "S", 2),))
    views = {view["id"]: view for view in site.build_site_view(catalog, {})["papers"]}
    assert views["ld"]["extensions"] == [{"id": "ld-tpami", "name": "LD (TPAMI 2023)"}]
    assert views["ld"]["extends"] is None
    assert views["ld-tpami"]["extends"] == {"id": "ld", "name": "LD (CVPR 2022)"}
    assert views["ld-tpami"]["extensions"] == []


def test_the_page_says_what_an_implementation_covers_and_why_a_paper_has_none():
    paper = Paper(
        id="x", title="T", authors=("A",), year=2023, sections=("general",), description="D.", links=(),
        implementations=(Implementation("ToyLoss", "paper", covers="The object-level term only."),),
    )
    view = site.paper_view(paper, {}, {"ToyLoss": "kdimpl/losses/toy.py"}, "api/", "")
    assert view["implementations"][0]["covers"] == "The object-level term only."
    assert view["no_implementation"] == ""
    survey = Paper(
        id="s", title="S", authors=("A",), year=2023, sections=("general",), description="D.", links=(),
        no_implementation=NoImplementation("survey"),
    )
    assert site.paper_view(survey, {}, {}, "api/", "")["no_implementation"] == "a survey, with no objective of its own"
    noted = Paper(
        id="n", title="N", authors=("A",), year=2023, sections=("general",), description="D.", links=(),
        no_implementation=NoImplementation("unreadable", "Only a poster is public."),
    )
    assert site.paper_view(noted, {}, {}, "api/", "")["no_implementation"] == "Only a poster is public."

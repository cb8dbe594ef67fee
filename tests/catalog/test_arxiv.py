"""``new`` and ``verify`` against recorded arXiv Atom feeds served from 127.0.0.1 (see fixtures/health/README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from catalog.arxiv import ENV_API, TODO_SECTION, ArxivError, github_link, names_match, parse_feed, parse_ref
from catalog.commands import _common
from catalog.commands import new as new_command
from catalog.commands import verify as verify_command
from catalog.model import Catalog, Link, Paper
from catalog.text import title_key
from catalog.validate import Result, load_catalog
from catalog.writer import paper_to_yaml
from tests.catalog.httpserver import Reply, ScriptedServer

FIXTURES = Path(__file__).parent / "fixtures" / "health"
REAL_FEED = (FIXTURES / "arxiv-id_list-1111.2011v2.xml").read_text(encoding="utf-8")
KD_FEED = (FIXTURES / "arxiv-id_list-2205.01529-2111.11837.xml").read_text(encoding="utf-8")
ERROR_FEED = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <entry>
    <id>http://arxiv.org/api/errors#incorrect_id_format_for_1234.12345x</id>
    <title>Error</title>
    <summary>incorrect id format for 1234.12345x</summary>
  </entry>
</feed>
"""
MGD_AUTHORS = ["Zhendong Yang", "Zhe Li", "Mingqi Shao", "Dachuan Shi", "Zehuan Yuan", "Chun Yuan"]


@pytest.fixture
def api(monkeypatch):
    with ScriptedServer() as server:
        monkeypatch.setenv(ENV_API, server.url("/api/query"))
        yield server


def new_args(root, *argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    new_command.add_arguments(parser)
    return parser.parse_args(["--root", str(root), *argv, "--timeout", "2"])


def verify_args(root, *argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    verify_command.add_arguments(parser)
    return parser.parse_args(["--root", str(root), "--pause", "0", "--timeout", "2", *argv])


def use_catalog(monkeypatch, catalog: Catalog) -> None:
    """Commands that read the catalog get ``catalog`` (papers built by hand) instead of loading papers/."""
    monkeypatch.setattr(_common, "validate_root", lambda root: Result(catalog, []))


def write_paper_file(root: Path, pid: str, **data) -> Path:
    path = root / "papers" / f"{pid}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(paper_to_yaml(data), encoding="utf-8")
    return path


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("arxiv:2205.01529", ("2205.01529", None)),
        ("arXiv:2205.01529v2", ("2205.01529", "v2")),
        ("2205.01529", ("2205.01529", None)),
        ("https://arxiv.org/abs/2205.01529", ("2205.01529", None)),
        ("https://arxiv.org/abs/2205.01529v3", ("2205.01529", "v3")),
        ("http://arxiv.org/pdf/2205.01529v1.pdf", ("2205.01529", "v1")),
        ("https://arxiv.org/pdf/2205.01529", ("2205.01529", None)),
        ("https://export.arxiv.org/abs/2105.00001", ("2105.00001", None)),
        ("cs/0601001", ("cs/0601001", None)),
        ("https://arxiv.org/abs/hep-th/9901001v2", ("hep-th/9901001", "v2")),
    ],
)
def test_parse_ref(text, expected):
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["https://example.org/abs/2205.01529", "arxiv:22050", "", "doi:10.1/x"])
def test_parse_ref_rejects(text):
    with pytest.raises(ValueError, match="not an arXiv reference"):
        parse_ref(text)


def test_parse_real_feed():
    (record,) = parse_feed(REAL_FEED)
    assert record.id == "1111.2011" and record.version == "v2"
    assert record.title == "Quantum Criticality for Extended Nodes on a Bethe Lattice in the Large Connectivity Limit"
    assert record.authors == ["James M. Murray", "Adrian Del Maestro", "Zlatko Tesanovic"]
    assert record.year == 2011
    assert record.doi == "10.1103/PhysRevB.85.115117"
    assert record.primary_category == "cond-mat.str-el"
    assert record.journal_ref == "Phys. Rev. B 85, 115117 (2012)"
    assert github_link(record) is None


def test_github_links_from_abstract_and_comments():
    mgd, fgd = parse_feed(KD_FEED)
    assert github_link(mgd) == "https://github.com/yzd-v/MGD"  # trailing period dropped
    assert github_link(fgd) == "https://github.com/yzd-v/FGD"  # no scheme in the comment


def test_error_feed_raises():
    with pytest.raises(ArxivError, match="incorrect id format"):
        parse_feed(ERROR_FEED)
    with pytest.raises(ArxivError, match="not valid XML"):
        parse_feed("<feed")


# --- normalisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [
    ("Dariu M. Gavrila", "Dariu M Gavrila"),
    ("Zhen-Liang Ni", "Zhenliang Ni"),
    ("J. Smith", "John Smith"),
    ("Philip De Rijk", "Philip de Rijk"),
    ("José García", "Jose Garcia"),
    ("Liangyan Gui", "Liang-Yan Gui"),
    ("Elliot J. Crowley", "Elliot Crowley"),
])
def test_names_match(a, b):
    assert names_match(a, b) and names_match(b, a)


@pytest.mark.parametrize("a, b", [("Jun Wang", "Qibin Hou"), ("Guangkai Xu", "Hai-Ming Xu"),
                                  ("Yu Wang", "Yi Wang"), ("Chunting Zhou", "Linfeng Zhang")])
def test_names_differ(a, b):
    assert not names_match(a, b)


def test_title_key():
    assert title_key("D$^3$ETR: Decoder Distillation") == title_key("D³ETR: Decoder  distillation")
    assert title_key("Prediction-Guided Distillation") == title_key("Prediction Guided Distillation")
    assert title_key("CrossKD: Cross-Head KD for Dense Object Detection") != title_key(
        "CrossKD: Cross-Head KD for Object Detection"
    )


# --- new ----------------------------------------------------------------------------------------------


def test_new_writes_stub_from_recorded_feed(api, tmp_path, capsys):
    api.route("/api/query", Reply(200, {"Content-Type": "application/atom+xml"}, REAL_FEED))
    assert new_command.run(new_args(tmp_path, "arxiv:1111.2011")) == 0
    (request,) = api.requests_to("/api/query")
    assert parse_qs(request.query)["id_list"] == ["1111.2011"]
    path = tmp_path / "papers" / "murray2011.yaml"
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert data == {
        "title": "Quantum Criticality for Extended Nodes on a Bethe Lattice in the Large Connectivity Limit",
        "authors": ["James M. Murray", "Adrian Del Maestro", "Zlatko Tesanovic"],
        "venue": "arXiv",
        "year": 2011,
        "arxiv": "1111.2011",
        "doi": "10.1103/PhysRevB.85.115117",
        "sections": [TODO_SECTION],
        "description": data["description"],
        "links": [{"kind": "arxiv", "url": "https://arxiv.org/abs/1111.2011"}],
    }
    assert data["description"].startswith("TODO")
    assert text == paper_to_yaml(data)  # canonical writer output
    assert "papers/murray2011.yaml" in capsys.readouterr().out


def test_new_from_pdf_url_with_version_finds_code_and_venue(api, tmp_path):
    api.route("/api/query", Reply(200, body=KD_FEED))
    assert new_command.run(new_args(tmp_path, "https://arxiv.org/pdf/2205.01529v2", "--id", "mgd")) == 0
    data = yaml.safe_load((tmp_path / "papers" / "mgd.yaml").read_text(encoding="utf-8"))
    assert data["title"] == "Masked Generative Distillation"
    assert data["authors"] == MGD_AUTHORS
    assert (data["venue"], data["year"], data["arxiv"]) == ("ECCV", 2022, "2205.01529")
    assert data["code"] == [{"url": "https://github.com/yzd-v/MGD", "official": True}]
    assert data["links"] == [{"kind": "arxiv", "url": "https://arxiv.org/abs/2205.01529"}]


def test_new_refuses_same_arxiv_id_without_asking_arxiv(api, tmp_path, capsys):
    api.route("/api/query", Reply(200, body=KD_FEED))
    write_paper_file(tmp_path, "fgd", title="Focal and Global Knowledge Distillation for Detectors",
                     authors=["Zhendong Yang"], venue="CVPR", year=2022, arxiv="2111.11837", sections=["general"],
                     description="D.", links=[{"kind": "arxiv", "url": "https://arxiv.org/abs/2111.11837"}])
    assert new_command.run(new_args(tmp_path, "arXiv:2111.11837v1")) == 1
    assert "papers/fgd.yaml already has arXiv 2111.11837" in capsys.readouterr().err
    assert api.requests_to("/api/query") == []
    assert sorted(p.name for p in (tmp_path / "papers").iterdir()) == ["fgd.yaml"]


def test_new_refuses_same_normalised_title(api, tmp_path, capsys):
    api.route("/api/query", Reply(200, body=KD_FEED))
    write_paper_file(tmp_path, "mgd-eccv", title="Masked generative  distillation.", authors=["Zhendong Yang"],
                     venue="ECCV", year=2022, sections=["general"], description="D.",
                     links=[{"kind": "ecva", "url": "https://www.ecva.net/x"}])
    assert new_command.run(new_args(tmp_path, "2205.01529")) == 1
    assert "papers/mgd-eccv.yaml already has the title" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "papers").iterdir()) == ["mgd-eccv.yaml"]


def test_new_reports_api_errors(api, tmp_path, capsys):
    api.route("/api/query", Reply(200, body=ERROR_FEED))
    assert new_command.run(new_args(tmp_path, "2205.01529")) == 2
    assert "incorrect id format" in capsys.readouterr().err
    api.route("/api/query", Reply(200, body=REAL_FEED))  # a feed without the asked id
    assert new_command.run(new_args(tmp_path, "2205.01529")) == 1
    assert "arXiv has no paper 2205.01529" in capsys.readouterr().err


def test_new_stub_is_rejected_by_check_until_completed(api, tmp_path):
    sections = Path(__file__).parent / "fixtures" / "import" / "sections.yaml"  # has a "general" section
    api.route("/api/query", Reply(200, body=KD_FEED))
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "_sections.yaml").write_text(sections.read_text())
    assert new_command.run(new_args(tmp_path, "2205.01529", "--id", "mgd")) == 0
    _catalog, problems = load_catalog(tmp_path)
    assert any(str(p).startswith("papers/mgd.yaml:") and "sections" in str(p) for p in problems), problems
    # With a real section, the TODO description is still refused.
    path = tmp_path / "papers" / "mgd.yaml"
    path.write_text(path.read_text().replace(TODO_SECTION, "general"))
    _catalog, problems = load_catalog(tmp_path)
    assert problems and all("description" in str(p) for p in problems), problems


# --- verify -------------------------------------------------------------------------------------------


def _paper_from_file(root: Path, pid: str) -> Paper:
    data = yaml.safe_load((root / "papers" / f"{pid}.yaml").read_text(encoding="utf-8"))
    return Paper(id=pid, title=data["title"], authors=tuple(data["authors"]), year=data["year"],
                 sections=tuple(data["sections"]), description=data["description"],
                 links=tuple(Link(x["kind"], x["url"], x["kind"]) for x in data["links"]),
                 venue=data.get("venue"), arxiv=data.get("arxiv"), path=f"papers/{pid}.yaml")


@pytest.fixture
def kd_root(tmp_path, monkeypatch):
    common = dict(venue="ECCV", year=2022, sections=["general"], description="D.")
    # Formatting differences only: must not be reported.
    write_paper_file(tmp_path, "mgd", title="Masked generative distillation", arxiv="2205.01529",
                     authors=["Zhendong  Yang", "zhe li", "Mingqi Shao", "D. Shi", "Zehuan Yuan", "Chun Yuán"],
                     links=[{"kind": "arxiv", "url": "https://arxiv.org/abs/2205.01529"}], **common)
    # The seed's FKD mistake: another paper's author list.
    write_paper_file(tmp_path, "fgd", title="Focal and Global Knowledge Distillation for Detectors",
                     arxiv="2111.11837", authors=["Chunting Zhou", "Graham Neubig", "Jiatao Gu"],
                     links=[{"kind": "arxiv", "url": "https://arxiv.org/abs/2111.11837"}], **common)
    # No arXiv id: not asked.
    write_paper_file(tmp_path, "unikd", title="UniKD", authors=["Shanshan Lao"],
                     links=[{"kind": "cvf", "url": "https://openaccess.thecvf.com/x"}], **common)
    catalog = Catalog(papers=tuple(_paper_from_file(tmp_path, p) for p in ("mgd", "fgd", "unikd")), sections=())
    use_catalog(monkeypatch, catalog)
    return tmp_path


def test_verify_reports_author_mismatch_with_line(api, kd_root, capsys):
    api.route("/api/query", Reply(200, body=KD_FEED))
    assert verify_command.run(verify_args(kd_root)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    authors_line = paper_to_yaml({"title": "x", "authors": ["a"]}).splitlines().index("authors:") + 1
    assert out == [f"papers/fgd.yaml:{authors_line}: authors: 3 authors here, 7 on arXiv 2111.11837; missing "
                   "Zhendong Yang, Zhe Li, Xiaohu Jiang, Yuan Gong, Zehuan Yuan, Danpei Zhao, Chun Yuan; "
                   "not on arXiv: Chunting Zhou, Graham Neubig, Jiatao Gu"]
    (request,) = api.requests_to("/api/query")  # one batched query for both ids
    assert parse_qs(request.query)["id_list"] == ["2111.11837,2205.01529"]


def test_verify_reports_title_and_single_author(api, tmp_path, monkeypatch, capsys):
    path = write_paper_file(tmp_path, "crosskd", title="Masked Generative Distillation for Dense Detectors",
                            authors=["Zhendong Yang", "Zhe Li", "Mingqi Shao", "Dachuan Shi", "Jun Wang", "Chun Yuan"],
                            venue="ECCV", year=2022, arxiv="2205.01529", sections=["general"], description="D.",
                            links=[{"kind": "arxiv", "url": "https://arxiv.org/abs/2205.01529"}])
    catalog = Catalog(papers=(_paper_from_file(tmp_path, "crosskd"),), sections=())
    use_catalog(monkeypatch, catalog)
    api.route("/api/query", Reply(200, body=KD_FEED))
    assert verify_command.run(verify_args(tmp_path, "--no-cache")) == 1
    lines = path.read_text().splitlines()
    out = capsys.readouterr().out.strip().splitlines()
    title_line = next(i for i, line in enumerate(lines, 1) if line.startswith("title:"))
    wang_line = next(i for i, line in enumerate(lines, 1) if line.strip() == "- Jun Wang")
    assert out[0] == (f"papers/crosskd.yaml:{title_line}: title: 'Masked Generative Distillation for Dense Detectors'"
                      " here, 'Masked Generative Distillation' on arXiv 2205.01529")
    assert out[1] == f"papers/crosskd.yaml:{wang_line}: authors[4]: 'Jun Wang' here, 'Zehuan Yuan' on arXiv 2205.01529"
    assert len(out) == 2


def test_verify_batches_and_caches(api, kd_root, capsys):
    api.route("/api/query", Reply(200, body=KD_FEED))
    assert verify_command.run(verify_args(kd_root, "--batch", "1")) == 1
    assert [parse_qs(r.query)["id_list"] for r in api.requests_to("/api/query")] == [["2111.11837"], ["2205.01529"]]
    assert (kd_root / ".cache" / "catalog-arxiv.json").is_file()
    first = capsys.readouterr().out
    # Cached: no request at all, same report.
    assert verify_command.run(verify_args(kd_root)) == 1
    assert len(api.requests_to("/api/query")) == 2
    assert capsys.readouterr().out == first


def test_verify_clean_catalog_exits_0(api, tmp_path, monkeypatch):
    write_paper_file(tmp_path, "mgd", title="Masked Generative Distillation", authors=MGD_AUTHORS, venue="ECCV",
                     year=2022, arxiv="2205.01529", sections=["general"], description="D.",
                     links=[{"kind": "arxiv", "url": "https://arxiv.org/abs/2205.01529"}])
    catalog = Catalog(papers=(_paper_from_file(tmp_path, "mgd"),), sections=())
    use_catalog(monkeypatch, catalog)
    api.route("/api/query", Reply(200, body=KD_FEED))
    assert verify_command.run(verify_args(tmp_path, "--no-cache")) == 0


def test_verify_unknown_id_and_unreachable_api(api, tmp_path, monkeypatch, capsys):
    write_paper_file(tmp_path, "x", title="X", authors=["A B"], venue="arXiv", year=2020, arxiv="2001.00001",
                     sections=["general"], description="D.", links=[{"kind": "arxiv", "url": "https://arxiv.org/abs/2001.00001"}])
    catalog = Catalog(papers=(_paper_from_file(tmp_path, "x"),), sections=())
    use_catalog(monkeypatch, catalog)
    api.route("/api/query", Reply(200, body=KD_FEED))
    assert verify_command.run(verify_args(tmp_path, "--no-cache")) == 1
    assert "papers/x.yaml:" in capsys.readouterr().out
    api.route("/api/query", Reply(404))
    assert verify_command.run(verify_args(tmp_path, "--no-cache")) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_python_m_catalog_new_uses_the_env_api(api, tmp_path):
    import os
    import subprocess

    api.route("/api/query", Reply(200, body=KD_FEED))
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "catalog", "new", "arxiv:2111.11837", "--root", str(tmp_path),
                           "--id", "fgd"], cwd=repo, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load((tmp_path / "papers" / "fgd.yaml").read_text(encoding="utf-8"))
    assert (data["venue"], data["year"], data["code"][0]["url"]) == ("CVPR", 2022, "https://github.com/yzd-v/FGD")
    assert len(api.requests_to("/api/query")) == 1

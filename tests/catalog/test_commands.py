"""What a contributor runs: ``check`` (and ``--strict``), ``new --offline``, one notion of "same title"."""

from __future__ import annotations

import yaml

from catalog import cli
from catalog.arxiv import ArxivRecord, compare
from catalog.model import Link, Paper
from catalog.text import host_key, same_title, title_key, url_host
from catalog.validate import validate_root
from tests.catalog.repo import make_repo

# --- check ---------------------------------------------------------------------------------------------


def test_stale_generated_files_pass_check_in_one_line_and_fail_strict(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert cli.main(["check", "--root", str(root)]) == 0  # never built
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [
        "catalog check: 4 papers OK; README.md and papers.bib are out of date: run `python -m catalog build` "
        "(CI on main regenerates them)"]
    assert cli.main(["check", "--strict", "--root", str(root)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli.main(["build", "--root", str(root)]) == 0
    assert cli.main(["check", "--strict", "--root", str(root)]) == 0


def test_invalid_data_fails_check_with_or_without_strict(tmp_path, capsys):
    root = make_repo(tmp_path)
    (root / "papers" / "beta.yaml").write_text("titel: x\n", encoding="utf-8")
    assert cli.main(["check", "--root", str(root)]) == 1
    assert cli.main(["check", "--strict", "--root", str(root)]) == 1


# --- new --offline -------------------------------------------------------------------------------------


def test_new_offline_writes_a_template_that_check_explains(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert cli.main(["new", "--offline", "my-paper", "--root", str(root)]) == 0
    path = root / "papers" / "my-paper.yaml"
    assert "wrote papers/my-paper.yaml" in capsys.readouterr().out
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert {"title", "authors", "venue", "year", "sections", "description", "links"} <= set(data)
    problems = [str(p) for p in validate_root(root).problems]
    placeholders = [p for p in problems if p.startswith("papers/my-paper.yaml:") and "placeholder" in p]
    for field in ("title", "authors[0]", "venue", "year", "sections[0]", "description", "links[0].kind",
                  "links[0].url"):
        assert any(f": {field}: " in p for p in placeholders), (field, problems)
    assert cli.main(["check", "--root", str(root)]) == 1


def test_new_offline_never_overwrites(tmp_path, capsys):
    root = make_repo(tmp_path)
    before = (root / "papers" / "beta.yaml").read_bytes()
    assert cli.main(["new", "--offline", "beta", "--root", str(root)]) == 1
    assert "papers/beta.yaml exists" in capsys.readouterr().err
    assert (root / "papers" / "beta.yaml").read_bytes() == before


def test_new_offline_with_an_arxiv_reference_fills_the_arxiv_fields(tmp_path):
    root = make_repo(tmp_path)
    assert cli.main(["new", "--template", "arxiv:2111.11837v2", "--id", "fgd", "--root", str(root)]) == 0
    data = yaml.safe_load((root / "papers" / "fgd.yaml").read_text(encoding="utf-8"))
    assert data["arxiv"] == "2111.11837"
    assert data["links"] == [{"kind": "arxiv", "url": "https://arxiv.org/abs/2111.11837"}]
    assert cli.main(["new", "--offline", "2111.11838", "--root", str(root)]) == 0
    assert (root / "papers" / "2111-11838.yaml").is_file()


def test_new_offline_refuses_a_bad_reference(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert cli.main(["new", "--offline", "Not An Id", "--root", str(root)]) == 2
    assert "neither an arXiv reference nor a paper id" in capsys.readouterr().err


# --- one definition of "same title" and "URL host" -------------------------------------------------------


def test_same_title():
    assert same_title("Résumé of Distillation", "Resume of distillation")
    assert same_title("Real-Time  Detection: A Survey.", "realtime detection a survey")
    assert same_title("Straße", "STRASSE")
    assert not same_title("CrossKD for Dense Object Detection", "CrossKD for Object Detection")
    assert title_key("知识蒸馏") == "知识蒸馏"  # letters of any script count


def test_check_and_verify_agree_on_accents(tmp_path):
    root = make_repo(tmp_path)
    beta = root / "papers" / "beta.yaml"
    data = yaml.safe_load(beta.read_text(encoding="utf-8"))
    alpha = yaml.safe_load((root / "papers" / "alpha.yaml").read_text(encoding="utf-8"))
    data["title"] = alpha["title"].replace("Distillation", "Distillatión")
    beta.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    problems = [str(p) for p in validate_root(root).problems]
    assert any("papers/alpha.yaml" in p and "papers/beta.yaml" in p and "title" in p for p in problems), problems
    paper = Paper(id="r", title="Résumé Distillation", authors=("Ann Lee",), year=2020, sections=("s",),
                  description="D.", links=(Link("arxiv", "https://arxiv.org/abs/2001.00001", "arXiv"),),
                  path="papers/r.yaml")
    record = ArxivRecord(id="2001.00001", version=None, title="Resume  Distillation", authors=["Ann Lee"], year=2020)
    assert compare(paper, record, tmp_path) == []


def test_url_host():
    assert url_host("https://WWW.Example.COM./a") == "www.example.com"
    assert url_host("https://bücher.example/") == "xn--bcher-kva.example"
    assert url_host("not a url") == ""
    assert host_key("https://example.com:443/") == "example.com"
    assert host_key("http://example.com:8080/") == "example.com:8080"
    assert host_key("http://[::1]:8080/") == "[::1]:8080"


def test_new_offline_when_papers_is_a_file(tmp_path, capsys):
    (tmp_path / "papers").write_text("not a folder\n")
    assert cli.main(["new", "--offline", "x", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("new: cannot write papers/x.yaml:") and "Traceback" not in err

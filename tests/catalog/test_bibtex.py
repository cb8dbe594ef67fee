"""BibTeX export: citation keys, entry types, escaping, and a round trip through bibtexparser."""

from __future__ import annotations

import argparse
import re
import types

import bibtexparser
import pytest

from catalog.bibtex import (
    base_key,
    citation_keys,
    escape_latex,
    protect_title,
    render_bibtex,
    venue_table,
)
from catalog.commands import bibtex as command
from catalog.commands.bibtex import add_arguments, run
from catalog.model import Catalog, CodeLink, Link, Paper


def paper(pid, title, authors, year, venue, **kw):
    default = (Link("arxiv", f"https://arxiv.org/abs/{kw['arxiv']}", "arXiv"),) if kw.get("arxiv") else ()
    links = kw.pop("links", default)
    return Paper(id=pid, title=title, authors=tuple(authors), year=year, sections=("general",),
                 description="A description.", links=links, venue=venue, path=f"papers/{pid}.yaml", **kw)


PAPERS = (
    paper("fgd", "Focal and Global Knowledge Distillation for Detectors",
          ["Zhendong Yang", "Zhe Li", "Xiaohu Jiang"], 2022, "CVPR", arxiv="2111.11837",
          doi="10.1109/CVPR52688.2022.00460",
          links=(Link("cvf", "https://openaccess.thecvf.com/content/CVPR2022/html/Yang_Focal.html", "CVF"),
                 Link("arxiv", "https://arxiv.org/abs/2111.11837", "arXiv")),
          code=(CodeLink("https://github.com/yzd-v/FGD", "GitHub"),)),
    paper("fkd-tpami", "Structured Knowledge Distillation for Accurate and Efficient Object Detection",
          ["Linfeng Zhang", "Kaisheng Ma"], 2023, "TPAMI", doi="10.1109/TPAMI.2023.3300470",
          links=(Link("ieee", "https://ieeexplore.ieee.org/abstract/document/10198386", "IEEE Xplore"),)),
    paper("tbd", "Task-Balanced Distillation for Object Detection", ["Ruining Tang", "Zhenyu Liu"], 2023, "PR",
          arxiv="2208.03006"),
    paper("tadf", "Distilling Object Detectors with Task Adaptive Regularization",
          ["Ruoyu Sun", "Fuhui Tang"], 2020, "arXiv", arxiv="2006.13108"),
    paper("d3etr", "D³ETR: Decoder Distillation for Detection Transformer",
          ["Xiaokang Chen", "Jiahui Chen"], 2024, "IJCAI", arxiv="2211.09768", doi="10.24963/ijcai.2024/74"),
    paper("structural-kd", "Structural Knowledge Distillation for Object Detection",
          ["Philip de Rijk", "Lukas Schneider", "Dariu M. Gavrila"], 2022, "NeurIPS", arxiv="2211.13133"),
    # Same surname, year and first title word as `fgd`: keys must be disambiguated.
    paper("fgd-clash", "Focal Loss & 100% $pecial_chars {braces} #1 ~ ^ \\ for Détecteurs",
          ["Zhen Yáng"], 2022, "Unknown Workshop",
          links=(Link("doi", "https://doi.org/10.1000/x_y%20z#frag", "DOI"),)),
    paper("crosskd", "CrossKD: Cross-Head Knowledge Distillation for Object Detection",
          ["Jiabao Wang", "Yuming Chen"], 2024, "CVPR", arxiv="2306.11369"),
)
CATALOG = Catalog(papers=PAPERS, sections=())


def parse(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """``key -> (entry type, fields)`` with bibtexparser (2.x API, or 1.x where that is installed)."""
    if hasattr(bibtexparser, "parse_string"):
        library = bibtexparser.parse_string(text)
        assert not library.failed_blocks, [b.error for b in library.failed_blocks]
        return {e.key: (e.entry_type.lower(), {f.key.lower(): f.value for f in e.fields}) for e in library.entries}
    db = bibtexparser.loads(text)
    return {e["ID"]: (e["ENTRYTYPE"].lower(), {k.lower(): v for k, v in e.items() if k not in ("ID", "ENTRYTYPE")})
            for e in db.entries}


_UNESCAPE = {r"\textbackslash{}": "\\", r"\textasciitilde{}": "~", r"\textasciicircum{}": "^",
             r"\{": "{", r"\}": "}", r"\&": "&", r"\%": "%", r"\$": "$", r"\#": "#", r"\_": "_"}


def latex_to_text(value: str) -> str:
    """Undo our escaping and the protective braces (a braced value from bibtexparser 2 keeps its outer braces)."""
    if value.startswith("{") and value.endswith("}"):
        value = value[1:-1]
    pattern = re.compile("|".join(re.escape(k) for k in sorted(_UNESCAPE, key=len, reverse=True)) + r"|[{}]")
    return pattern.sub(lambda m: _UNESCAPE.get(m.group(0), ""), value)


def test_round_trip_fields_match_the_model():
    entries = parse(render_bibtex(CATALOG))
    keys = citation_keys(PAPERS)
    assert len(entries) == len(PAPERS)
    for p in PAPERS:
        kind, fields = entries[keys[p.id]]
        assert latex_to_text(fields["title"]) == p.title, p.id
        assert [a.strip() for a in latex_to_text(fields["author"]).split(" and ")] == list(p.authors), p.id
        assert latex_to_text(fields["year"]) == str(p.year)
        assert latex_to_text(fields.get("doi", "")) == (p.doi or "")
        assert latex_to_text(fields.get("eprint", "")) == (p.arxiv or "")
        assert latex_to_text(fields["url"]) == p.links[0].url
        info = venue_table().get(p.venue)
        if info is None:
            assert kind == "misc"
        else:
            assert kind == info["type"]
            container = "booktitle" if kind == "inproceedings" else "journal"
            assert latex_to_text(fields[container]) == info[container]


def test_entry_types_and_containers():
    entries = parse(render_bibtex(CATALOG))
    keys = citation_keys(PAPERS)
    kind, fields = entries[keys["fgd"]]
    assert kind == "inproceedings"
    assert "Computer Vision and Pattern Recognition" in fields["booktitle"]
    kind, fields = entries[keys["fkd-tpami"]]
    assert kind == "article"
    assert latex_to_text(fields["journal"]) == "IEEE Transactions on Pattern Analysis and Machine Intelligence"
    kind, fields = entries[keys["tbd"]]
    assert kind == "article" and latex_to_text(fields["journal"]) == "Pattern Recognition"
    kind, fields = entries[keys["tadf"]]
    assert kind == "misc"
    assert latex_to_text(fields["eprint"]) == "2006.13108" and latex_to_text(fields["archiveprefix"]) == "arXiv"
    assert "howpublished" not in fields and "booktitle" not in fields
    kind, fields = entries[keys["fgd-clash"]]
    assert kind == "misc" and latex_to_text(fields["howpublished"]) == "Unknown Workshop"


def test_citation_keys_are_stable_ascii_and_disambiguated():
    keys = citation_keys(PAPERS)
    assert keys["tadf"] == "sun2020distilling"
    assert keys["d3etr"] == "chen2024d3etr"  # superscript three folded by NFKD
    assert keys["structural-kd"] == "rijk2022structural"
    assert keys["crosskd"] == "wang2024crosskd"
    # fgd and fgd-clash both give yang2022focal: suffixes in paper-id order.
    assert base_key(PAPERS[0]) == base_key(PAPERS[6]) == "yang2022focal"
    assert (keys["fgd"], keys["fgd-clash"]) == ("yang2022focala", "yang2022focalb")
    assert len(set(keys.values())) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9]+", k) for k in keys.values())
    # Order of the input does not matter.
    assert citation_keys(tuple(reversed(PAPERS))) == keys


def test_stopwords_are_skipped_in_keys():
    p = paper("x", "On the Use of Masks", ["Ann Lee"], 2021, "ICCV")
    assert base_key(p) == "lee2021use"


def test_output_is_deterministic_and_sorted():
    a = render_bibtex(CATALOG)
    b = render_bibtex(Catalog(papers=tuple(reversed(PAPERS)), sections=()))
    assert a == b
    keys = re.findall(r"^@\w+\{([^,]+),", a, flags=re.M)
    assert keys == sorted(keys)
    assert a.endswith("}\n")


def test_latex_specials_escaped_and_capitals_protected():
    text = render_bibtex(CATALOG)
    assert (r"Focal Loss \& 100\% \$pecial\_chars \{braces\} \#1 \textasciitilde{} \textasciicircum{} \textbackslash{}"
            " for Détecteurs") in text
    assert "{CrossKD:} {Cross-Head} Knowledge Distillation for Object Detection" in text
    assert "Zhen Yáng" in text  # non-ASCII kept as UTF-8
    assert escape_latex("a_b") == r"a\_b"
    assert protect_title("HEAD: HEtero-Assists Distillation") == "{HEAD:} {HEtero-Assists} Distillation"
    # Every entry's braces balance (an unbalanced value would swallow the next entry).
    for block in text.split("\n@")[1:]:
        stripped = re.sub(r"\\[{}]", "", block)
        assert stripped.count("{") == stripped.count("}"), block


def test_venue_table_is_well_formed():
    table = venue_table()
    for label in ("CVPR", "ICCV", "ECCV", "NeurIPS", "ICLR", "AAAI", "IJCAI", "ICML", "WACV", "TPAMI", "PR"):
        assert label in table, label
    assert "arXiv" not in table  # a preprint has no container: @misc


def test_command_writes_papers_bib(tmp_path, monkeypatch):
    monkeypatch.setattr(command, "validate_root", lambda root: types.SimpleNamespace(catalog=CATALOG, problems=[]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    add_arguments(parser)
    assert run(parser.parse_args(["--root", str(tmp_path)])) == 0
    assert (tmp_path / "papers.bib").read_text(encoding="utf-8") == render_bibtex(CATALOG)
    out = tmp_path / "sub" / "x.bib"
    assert run(parser.parse_args(["--root", str(tmp_path), "--out", str(out)])) == 0
    assert out.read_text(encoding="utf-8") == render_bibtex(CATALOG)


def test_command_prints_with_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(command, "validate_root", lambda root: types.SimpleNamespace(catalog=CATALOG, problems=[]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    add_arguments(parser)
    assert run(parser.parse_args(["--root", str(tmp_path), "--out", "-"])) == 0
    assert capsys.readouterr().out == render_bibtex(CATALOG)
    assert not (tmp_path / "papers.bib").exists()


def test_command_refuses_partial_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        command,
        "validate_root",
        lambda root: types.SimpleNamespace(catalog=CATALOG, problems=["papers/x.yaml:3: title: missing"]),
    )
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    add_arguments(parser)
    assert run(parser.parse_args(["--root", str(tmp_path)])) == 1
    assert not (tmp_path / "papers.bib").exists()
    assert "papers/x.yaml:3: title: missing" in capsys.readouterr().err


@pytest.mark.parametrize("venue", [None, "arXiv"])
def test_arxiv_only_paper_without_venue(venue):
    p = paper("t", "A Title", ["Ann Lee"], 2020, venue, arxiv="2001.00001")
    kind, fields = parse(render_bibtex(Catalog(papers=(p,), sections=())))["lee2020title"]
    assert kind == "misc" and latex_to_text(fields["eprint"]) == "2001.00001"
    assert latex_to_text(fields["url"]) == "https://arxiv.org/abs/2001.00001"

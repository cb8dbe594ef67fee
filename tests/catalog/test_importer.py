"""The awesome-README importer (``python -m catalog import-markdown``), on the seed list and on small lists."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest
import yaml

from catalog.commands import import_markdown as import_command
from catalog.importer import ImportFailed, import_markdown, slugify
from catalog.writer import paper_to_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "import"
SEED = FIXTURES / "seed-README.md"
SECTIONS = FIXTURES / "sections.yaml"  # the section tree the seed was imported into

# Every paper and code URL of the seed, after http -> https, arXiv version removal and IEEE trailing-slash
# removal; listed by hand from the seed file (the badges and the table of contents are not entries).
SEED_URLS = {
    "https://arxiv.org/abs/1906.03609",
    "https://arxiv.org/abs/2006.13108",
    "https://arxiv.org/abs/2007.03282",
    "https://arxiv.org/abs/2009.11528",
    "https://arxiv.org/abs/2011.13256",
    "https://arxiv.org/abs/2102.12252",
    "https://arxiv.org/abs/2103.02340",
    "https://arxiv.org/abs/2103.14475",
    "https://arxiv.org/abs/2108.07482",
    "https://arxiv.org/abs/2108.10520",
    "https://arxiv.org/abs/2109.11496",
    "https://arxiv.org/abs/2109.12862",
    "https://arxiv.org/abs/2110.12724",
    "https://arxiv.org/abs/2111.00674",
    "https://arxiv.org/abs/2111.11837",
    "https://arxiv.org/abs/2112.04840",
    "https://arxiv.org/abs/2203.05469",
    "https://arxiv.org/abs/2207.02039",
    "https://arxiv.org/abs/2207.05345",
    "https://arxiv.org/abs/2208.03006",
    "https://arxiv.org/abs/2211.08071",
    "https://arxiv.org/abs/2211.09768",
    "https://arxiv.org/abs/2211.10156",
    "https://arxiv.org/abs/2211.13133",
    "https://arxiv.org/abs/2302.05637",
    "https://arxiv.org/abs/2306.11369",
    "https://arxiv.org/abs/2307.12101",
    "https://arxiv.org/abs/2308.09105",
    "https://arxiv.org/abs/2308.14286",
    "https://github.com/ArchipLab-LinfengZhang/Object-Detection-Knowledge-Distillation-ICLR2021",
    "https://github.com/ChenhongyiYang/PGD",
    "https://github.com/HikariTJU/LD",
    "https://github.com/LutingWang/HEAD",
    "https://github.com/MegEngine/ICD",
    "https://github.com/Shengcao-Cao/MTPD",
    "https://github.com/TinyTigerPan/BCKD",
    "https://github.com/dvlab-research/Dsig",
    "https://github.com/irfanICMLL/TorchDistiller/tree/main/SemSeg-distill",
    "https://github.com/jbwang1997/CrossKD",
    "https://github.com/kornia/kornia",
    "https://github.com/lliai/DetKDS",
    "https://github.com/megvii-model/LabelEnc",
    "https://github.com/open-mmlab/mmdetection/tree/master/configs/lad",
    "https://github.com/open-mmlab/mmdetection/tree/master/configs/ld",
    "https://github.com/open-mmlab/mmrazor",
    "https://github.com/twangnh/Distilling-Object-Detectors",
    "https://github.com/yzd-v/FGD",
    "https://icml.cc/virtual/2023/poster/23867",
    "https://icml.cc/virtual/2024/poster/34018",
    "https://ieeexplore.ieee.org/abstract/document/10070820",
    "https://ieeexplore.ieee.org/abstract/document/10198386",
    "https://ieeexplore.ieee.org/abstract/document/10377607",
    "https://ieeexplore.ieee.org/abstract/document/10377611",
    "https://ieeexplore.ieee.org/abstract/document/8100259",
    "https://ieeexplore.ieee.org/abstract/document/8953432",
    "https://ieeexplore.ieee.org/abstract/document/9577671",
    "https://ieeexplore.ieee.org/abstract/document/9578919",
    "https://ieeexplore.ieee.org/abstract/document/9706993",
    "https://ieeexplore.ieee.org/abstract/document/9710762",
    "https://ieeexplore.ieee.org/abstract/document/9711100",
    "https://ieeexplore.ieee.org/abstract/document/9711293",
    "https://ieeexplore.ieee.org/abstract/document/9878414",
    "https://ieeexplore.ieee.org/abstract/document/9879869",
    "https://ieeexplore.ieee.org/document/10376876",
    "https://ieeexplore.ieee.org/document/10654891",
    "https://link.springer.com/chapter/10.1007/978-3-030-58568-6_32",
    "https://link.springer.com/chapter/10.1007/978-3-030-58595-2_32",
    "https://link.springer.com/chapter/10.1007/978-3-031-20077-9_19",
    "https://link.springer.com/chapter/10.1007/978-3-031-20077-9_8",
    "https://link.springer.com/chapter/10.1007/978-3-031-20080-9_27",
    "https://ojs.aaai.org/index.php/AAAI/article/view/20018",
    "https://ojs.aaai.org/index.php/AAAI/article/view/20240",
    "https://openaccess.thecvf.com/content/CVPR2021/html/Dai_General_Instance_Distillation_for_Object_Detection_CVPR_2021_paper.html",
    "https://openaccess.thecvf.com/content/CVPR2021/html/Guo_Distilling_Object_Detectors_via_Decoupled_Features_CVPR_2021_paper.html",
    "https://openaccess.thecvf.com/content/CVPR2022/html/Yang_Focal_and_Global_Knowledge_Distillation_for_Detectors_CVPR_2022_paper.html",
    "https://openaccess.thecvf.com/content/CVPR2022/html/Zheng_Localization_Distillation_for_Dense_Object_Detection_CVPR_2022_paper.html",
    "https://openaccess.thecvf.com/content/CVPR2023/html/Zhu_ScaleKD_Distilling_Scale-Aware_Knowledge_in_Small_Object_Detector_CVPR_2023_paper.html",
    "https://openaccess.thecvf.com/content/CVPR2024/html/Wang_CrossKD_Cross-Head_Knowledge_Distillation_for_Object_Detection_CVPR_2024_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2021/html/Chen_Deep_Structured_Instance_Graph_for_Distilling_Object_Detectors_ICCV_2021_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2021/html/Shu_Channel-Wise_Knowledge_Distillation_for_Dense_Prediction_ICCV_2021_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2021/html/Yao_G-DetKD_Towards_General_Distillation_Framework_for_Object_Detectors_via_Contrastive_ICCV_2021_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2023/html/Chang_DETRDistill_A_Universal_Knowledge_Distillation_Framework_for_DETR-families_ICCV_2023_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2023/html/Lao_UniKD_Universal_Knowledge_Distillation_for_Mimicking_Homogeneous_or_Heterogeneous_Object_ICCV_2023_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2023/html/Wu_Spatial_Self-Distillation_for_Object_Detection_with_Inaccurate_Bounding_Boxes_ICCV_2023_paper.html",
    "https://openaccess.thecvf.com/content/ICCV2023/html/Yang_Bridging_Cross-task_Protocol_Inconsistency_for_Distillation_in_Dense_Object_Detection_ICCV_2023_paper.html",
    "https://openaccess.thecvf.com/content/WACV2022/html/Nguyen_Improving_Object_Detection_by_Label_Assignment_Distillation_WACV_2022_paper.html",
    "https://openaccess.thecvf.com/content_CVPR_2019/html/Wang_Distilling_Object_Detectors_With_Fine-Grained_Feature_Imitation_CVPR_2019_paper.html",
    "https://openaccess.thecvf.com/content_cvpr_2017/html/Li_Mimicking_Very_Efficient_CVPR_2017_paper.html",
    "https://openreview.net/forum?id=O3My0RK9s_R",
    "https://openreview.net/forum?id=Q9dj3MzY1o7",
    "https://openreview.net/forum?id=_bOfK2k_7R",
    "https://openreview.net/forum?id=k7aeAz4Vbb",
    "https://openreview.net/forum?id=uKhGRvM8QNH",
    "https://proceedings.neurips.cc/paper/2017/hash/e1e32e235eee1f970470a3a6658dfdd5-Abstract.html",
    "https://proceedings.neurips.cc/paper_files/paper/2021/hash/29c0c0ee223856f336d7ea8052057753-Abstract.html",
    "https://proceedings.neurips.cc/paper_files/paper/2021/hash/892c91e0a653ba19df81a90f89d99bcd-Abstract.html",
    "https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123590528.pdf",
    "https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123700528.pdf",
    "https://www.ecva.net/papers/eccv_2022/papers_ECCV/papers/136690123.pdf",
    "https://www.ecva.net/papers/eccv_2022/papers_ECCV/papers/136690310.pdf",
    "https://www.ecva.net/papers/eccv_2022/papers_ECCV/papers/136700456.pdf",
    "https://www.sciencedirect.com/science/article/abs/pii/S0031320323000213",
}

# Entries per section in the seed (HEAD counts in both of its sections; "Newly Published Papers" is empty).
SEED_PER_SECTION = {
    "general": 2,
    "ground-truth-guided": 2,
    "prediction-guided": 3,
    "attention-guided": 4,
    "misc-foreground-masks": 1,
    "misc-feature-distillation": 1,
    "instance-distillation": 3,
    "label-assignment-distillation": 1,
    "balancing-between-tasks": 2,
    "misc-general": 3,
    "gfl": 1,
    "detr": 3,
    "heterogeneous": 5,
    "multi-teacher": 1,
    "teacher-free": 5,
    "miscellaneous": 2,
}


def _seed_sections():
    return yaml.safe_load(SECTIONS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def seed():
    return import_markdown(SEED.read_text(encoding="utf-8"), "seed-README.md", _seed_sections())


def _urls(papers):
    return {item["url"] for data in papers.values() for key in ("links", "code") for item in data.get(key, [])}


def _md(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- the seed ------------------------------------------------------------------------------

def test_seed_has_38_distinct_papers_from_39_entries(seed):
    assert len(seed.papers) == 38
    assert sum(seed.per_section.values()) == 39


def test_seed_keeps_every_link(seed):
    assert _urls(seed.papers) == SEED_URLS


def test_seed_entries_per_section(seed):
    assert seed.per_section == SEED_PER_SECTION
    counted = {}
    for data in seed.papers.values():
        for section in data["sections"]:
            counted[section] = counted.get(section, 0) + 1
    assert counted == SEED_PER_SECTION


def test_head_is_one_paper_in_two_sections(seed):
    heads = [pid for pid, d in seed.papers.items() if d["title"].startswith("HEAD:")]
    assert heads == ["head"]
    head = seed.papers["head"]
    assert head["sections"] == ["heterogeneous", "teacher-free"]
    assert "notes" not in head  # both copies carry the same description
    assert [link["kind"] for link in head["links"]] == ["ecva", "springer", "arxiv"]


def test_seed_ids(seed):
    assert {"fkd", "fkd-tpami", "d3etr", "g-detkd", "ssd-det", "chen2017", "li2022"} <= set(seed.papers)
    assert seed.papers["fkd"]["venue"] == "ICLR" and seed.papers["fkd-tpami"]["venue"] == "TPAMI"
    assert seed.papers["chen2017"]["title"] == "Learning Efficient Object Detection Models with Knowledge Distillation"


def test_seed_defective_headers_are_parsed(seed):
    p = seed.papers
    assert (p["tbd"]["venue"], p["tbd"].get("year")) == ("PR", None)  # "TBD. *PR*." has no year
    assert (p["bckd"]["venue"], p["bckd"]["year"]) == ("ICCV", 2023)  # no trailing period
    assert (p["crosskd"]["venue"], p["crosskd"]["year"]) == ("CVPR", 2024)  # venue not italicised
    assert (p["unikd"]["venue"], p["unikd"]["year"]) == ("ICCV", 2023)
    assert (p["tadf"]["venue"], p["tadf"]["year"]) == ("arXiv", 2020)  # "TADF." has no venue: arXiv year
    assert (p["kd-detr"]["venue"], p["kd-detr"]["year"]) == ("arXiv", 2022)
    assert p["d3etr"]["method"] == "D^3^ETR"  # recorded as written; data fixes are not the importer's job
    assert "method" not in p["li2022"] and (p["li2022"]["venue"], p["li2022"]["year"]) == ("AAAI", 2022)
    lines = {w.split(": warning")[0] for w in seed.warnings}
    assert {"seed-README.md:97", "seed-README.md:213", "seed-README.md:242", "seed-README.md:206"} <= lines


def test_seed_arxiv_ids_and_links_agree(seed):
    p = seed.papers
    assert p["pkd"]["arxiv"] == "2207.02039"
    assert p["rijk2022"]["arxiv"] == "2211.13133"
    assert p["fgd"]["arxiv"] == "2111.11837"
    with_arxiv = {pid for pid, d in p.items() if any(link["kind"] == "arxiv" for link in d["links"])}
    assert with_arxiv == {pid for pid, d in p.items() if "arxiv" in d}
    for pid in with_arxiv:
        assert f"https://arxiv.org/abs/{p[pid]['arxiv']}" in {link["url"] for link in p[pid]["links"]}, pid


def test_seed_fields(seed):
    lad = seed.papers["lad"]
    assert lad["authors"] == ["Chuong H. Nguyen", "Thuy C. Nguyen", "Tuan N. Tang", "Nam L. H. Phan"]
    assert "  " not in lad["description"]
    assert lad["code"] == [
        {"url": "https://github.com/open-mmlab/mmdetection/tree/master/configs/lad", "official": True, "label": "MMDet"}
    ]
    assert seed.papers["fgfi"]["code"] == [{"url": "https://github.com/twangnh/Distilling-Object-Detectors", "official": True}]
    assert seed.papers["mimic"]["links"][1] == {"kind": "ieee", "url": "https://ieeexplore.ieee.org/abstract/document/8100259"}
    assert seed.papers["tbd"]["links"][0]["kind"] == "sciencedirect"
    assert seed.papers["detkds"]["links"] == [{"kind": "icml", "url": "https://icml.cc/virtual/2024/poster/34018"}]


def test_seed_papers_survive_the_writer(seed):
    for data in seed.papers.values():
        assert yaml.safe_load(paper_to_yaml(data)) == data


def test_seed_without_a_sections_file_derives_the_tree():
    result = import_markdown(SEED.read_text(encoding="utf-8"), "seed-README.md")
    top = [(node["id"], node["title"]) for node in result.sections]
    assert top[0] == ("knowledge-distillation-for-general-object-detectors", "Knowledge Distillation for General Object Detectors")
    assert top[-1] == ("miscellaneous", "Miscellaneous")
    assert "newly-published-papers" not in {node["id"] for node in result.sections}  # empty: left out
    assert len(top) == 6
    leaf = result.sections[0]["children"][0]["children"][0]["children"]
    assert [node["id"] for node in leaf] == ["ground-truth-guided", "prediction-guided", "attention-guided",
                                             "miscellaneous-foreground-masks"]
    assert any("Newly Published Papers" in w for w in result.warnings)


# --- synthetic lists -----------------------------------------------------------------------

ENTRY = """\
FGD. *CVPR 2022*.
\\[[CVF](http://openaccess.thecvf.com/content/CVPR2022/html/x.html)\\]
\\[[arXiv](http://arxiv.org/pdf/2111.11837v3.pdf)\\]
<[GitHub](https://github.com/yzd-v/FGD)>
\\- Focal  distillation
continues on a second line.

- Focal and Global Knowledge Distillation for Detectors
- Zhendong Yang and Zhe  Li
"""


def _one(src, **kw):
    return import_markdown(_md(src), "list.md", **kw)


def test_synthetic_entry_is_normalised():
    result = _one("# Title\n\n## Contents\n\n- [Feature](#feature)\n\n## Feature\n\n" + ENTRY)
    assert result.sections == [{"id": "feature", "title": "Feature"}]
    assert result.papers == {
        "fgd": {
            "method": "FGD",
            "title": "Focal and Global Knowledge Distillation for Detectors",
            "authors": ["Zhendong Yang", "Zhe Li"],
            "venue": "CVPR",
            "year": 2022,
            "arxiv": "2111.11837",
            "sections": ["feature"],
            "description": "Focal distillation continues on a second line.",
            "links": [
                {"kind": "cvf", "url": "https://openaccess.thecvf.com/content/CVPR2022/html/x.html"},
                {"kind": "arxiv", "url": "https://arxiv.org/abs/2111.11837"},
            ],
            "code": [{"url": "https://github.com/yzd-v/FGD", "official": True}],
        }
    }


def test_same_paper_twice_with_another_description_gets_a_note():
    second = ENTRY.replace("\\- Focal  distillation\ncontinues on a second line.", "\\- Another view.")
    second = second.replace("<[GitHub](https://github.com/yzd-v/FGD)>", "<[Third-party port](https://github.com/x/fgd)>")
    result = _one("## A\n\n" + ENTRY + "\n## B\n\n" + second)
    (paper,) = result.papers.values()
    assert paper["sections"] == ["a", "b"]
    assert paper["notes"] == {"b": "Another view."}
    assert paper["code"] == [
        {"url": "https://github.com/yzd-v/FGD", "official": True},
        {"url": "https://github.com/x/fgd", "official": False, "label": "Third-party port"},
    ]


def test_same_title_without_arxiv_is_one_paper():
    entry = "X. *ICCV 2021*.\n\\[[CVF](https://openaccess.thecvf.com/a.html)\\]\n\\- D.\n\n- A Title\n- A B\n"
    result = _one("## A\n\n" + entry + "\n## B\n\n" + entry.replace("A Title", "a  title"))
    assert list(result.papers) == ["x"]


def test_ids_for_clashes_and_for_papers_without_a_method():
    entries = [
        "FKD. *ICLR 2021*.\n\\[[OpenReview](https://openreview.net/forum?id=a)\\]\n\\- A.\n\n- Title One\n- Linfeng Zhang and Kaisheng Ma\n",
        "FKD. *TPAMI 2023*.\n\\[[IEEE Xplore](https://ieeexplore.ieee.org/abstract/document/1/)\\]\n\\- B.\n\n- Title Two\n- Linfeng Zhang\n",
        "*NeurIPS 2017*.\n\\[[NeurIPS](https://papers.nips.cc/paper/6676)\\]\n\\- C.\n\n- Title Three\n- Guobin Chen and Wongun Choi\n",
        "D^3^ETR.\n\\[[IJCAI](https://www.ijcai.org/proceedings/2024/74)\\]\n\\- D.\n\n- Title Four\n- Xiaokang Chen\n",
    ]
    result = _one("## S\n\n" + "\n".join(entries))
    assert list(result.papers) == ["fkd", "fkd-tpami", "chen2017", "d3etr"]
    assert result.papers["fkd-tpami"]["links"] == [{"kind": "ieee", "url": "https://ieeexplore.ieee.org/abstract/document/1"}]
    assert "venue" not in result.papers["d3etr"] and "year" not in result.papers["d3etr"]
    assert any(w.startswith("list.md:24: warning: no venue and no arXiv link") for w in result.warnings)


def test_doi_link_fills_the_doi_field():
    entry = ("DRKD. *IJCAI 2023*.\n\\[[DOI](https://doi.org/10.24963/ijcai.2023/142)\\]\n\\- D.\n\n"
             "- Dual Relation Knowledge Distillation for Object Detection\n- Zhenliang Ni\n")
    (paper,) = _one("## S\n\n" + entry).papers.values()
    assert paper["doi"] == "10.24963/ijcai.2023/142"
    assert paper["links"] == [{"kind": "doi", "url": "https://doi.org/10.24963/ijcai.2023/142"}]


@pytest.mark.parametrize("text,expected", [("D^3^ETR", "d3etr"), ("G-DetKD", "g-detkd"), ("RM+PFI", "rm-pfi"),
                                           ("Müller", "muller"), ("SSD-Det", "ssd-det"), ("KD DETR", "kd-detr")])
def test_slugify(text, expected):
    assert slugify(text) == expected


def test_headings_map_to_existing_sections_by_title():
    tree = [{"id": "gen", "title": "General", "children": [{"id": "feat", "title": "Feature  distillation"}]}]
    result = _one("## General\n\n### Feature Distillation\n\n" + ENTRY, sections=tree)
    assert result.sections is None
    assert result.papers["fgd"]["sections"] == ["feat"]


# --- errors --------------------------------------------------------------------------------

def _problems(src, **kw):
    with pytest.raises(ImportFailed) as info:
        _one(src, **kw)
    return info.value.problems


def test_entry_without_its_list_is_reported_with_its_line():
    src = "## S\n\n" + ENTRY.split("\n\n")[0] + "\n\n" + ENTRY
    assert _problems(src) == ["list.md:3: entry is not followed by a two-item list (title, authors)"]


def test_list_with_three_items_is_reported():
    src = "## S\n\n" + ENTRY + "- a third item\n"
    assert _problems(src) == ["list.md:10: expected a two-item list (title, authors) after the entry, found 3 item(s)"]


def test_unparseable_lines_are_reported_with_their_line():
    bad = ENTRY.replace("<[GitHub](https://github.com/yzd-v/FGD)>", "see [GitHub](https://github.com/yzd-v/FGD)")
    bad = bad.replace("\\[[CVF](http", "\\[[Scribd](http").replace("openaccess.thecvf.com", "www.scribd.com")
    problems = _problems("## S\n\n" + bad)
    assert problems[0].startswith("list.md:6: cannot parse entry line 'see GitHub'")
    assert problems[1] == ("list.md:4: unknown paper link 'Scribd' (https://www.scribd.com/content/CVPR2022/html/x.html): "
                           "no link kind for this label or host")


def test_heading_missing_from_the_sections_file_is_reported():
    problems = _problems("## Elsewhere\n\n" + ENTRY, sections=[{"id": "gen", "title": "General"}])
    assert problems == ["list.md:3: section 'Elsewhere' (line 1) has no id in the sections file"]


def test_header_that_is_not_a_header_is_reported():
    src = "## S\n\n" + ENTRY.replace("FGD. *CVPR 2022*.", "FGD. *CVPR 2022*. *again*")
    assert _problems(src) == ["list.md:3: entry header 'FGD. *CVPR 2022*. *again*' has more than one italic part"]


# --- the command ---------------------------------------------------------------------------

def _args(tmp_path, file, **kw):
    parser = argparse.ArgumentParser()
    import_command.add_arguments(parser)
    argv = [str(file)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    args = parser.parse_args(argv)
    args.root = str(tmp_path)
    return args


def test_command_writes_one_file_per_paper(tmp_path, capsys):
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "_sections.yaml").write_text(SECTIONS.read_text(encoding="utf-8"), encoding="utf-8")
    assert import_command.run(_args(tmp_path, SEED, sections="papers/_sections.yaml")) == 0
    written = sorted(p.name for p in (tmp_path / "papers").glob("*.yaml"))
    assert len(written) == 39 and "head.yaml" in written and "_sections.yaml" in written
    head = yaml.safe_load((tmp_path / "papers" / "head.yaml").read_text(encoding="utf-8"))
    assert head["sections"] == ["heterogeneous", "teacher-free"]
    assert "38 papers" in capsys.readouterr().out
    # a second run refuses to overwrite, unless told to
    assert import_command.run(_args(tmp_path, SEED, sections="papers/_sections.yaml")) == 1
    assert "already exists" in capsys.readouterr().err
    assert import_command.run(_args(tmp_path, SEED, sections="papers/_sections.yaml", force=True)) == 0


def test_command_dry_run_writes_nothing(tmp_path, capsys):
    assert import_command.run(_args(tmp_path, SEED, out="out", dry_run=True)) == 0
    assert not (tmp_path / "out").exists()
    assert "would write" in capsys.readouterr().out


def test_command_reports_problems_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "list.md"
    src.write_text("## S\n\n" + ENTRY + "\n" + ENTRY.replace("- Zhendong", "- A third\n- Zhendong"), encoding="utf-8")
    assert import_command.run(_args(tmp_path, src, out="out")) == 1
    err = capsys.readouterr().err
    assert f"{src}:20: expected a two-item list" in err
    assert "Traceback" not in err and "nothing written" in err
    assert not (tmp_path / "out").exists()


def test_command_reports_an_unreadable_file(tmp_path, capsys):
    assert import_command.run(_args(tmp_path, tmp_path / "missing.md")) == 1
    assert "cannot read" in capsys.readouterr().err

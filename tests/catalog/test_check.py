"""Every validation rule of ``python -m catalog check``: a failing example and its exact message."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
import yaml

from catalog.validate import validate_root, venues

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "core" / "repo"
REPO = HERE.parents[1]
TOY = '''"""A toy module standing in for a kdimpl loss."""

from math import sqrt as reexported

__all__ = ["toy_loss", "ToyLoss", "reexported", "_hidden"]


def toy_loss(student, teacher):
    return 0


class ToyLoss:
    pass


def _hidden():
    return 1
'''
NEXT_YEAR = datetime.date.today().year + 1

# A valid paper; cases below edit it. Line numbers: method 2, title 3, authors 4-6, venue 7,
# year 8, arxiv 9, sections 10-11, description 12, links 13-17, code 18-20.
BASE = """\
# yaml-language-server: $schema=../catalog/schema/paper.schema.json
method: XKD
title: A Test Paper on Distillation
authors:
  - Ada Byron
  - Alan Turing
venue: CVPR
year: 2022
arxiv: "2201.99999"
sections:
  - masks
description: A test description.
links:
  - kind: cvf
    url: https://openaccess.thecvf.com/content/test.html
  - kind: arxiv
    url: https://arxiv.org/abs/2201.99999
code:
  - url: https://github.com/test/xkd
    official: true
"""


def make_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "kdimpl" / "losses").mkdir(parents=True)
    (root / "kdimpl" / "losses" / "toy.py").write_text(TOY, encoding="utf-8")
    return root


def problems_for(tmp_path: Path, files: dict[str, str | bytes]) -> list[str]:
    root = make_repo(tmp_path)
    for rel, content in files.items():
        path = root / rel
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return [str(problem) for problem in validate_root(root).problems]


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_fixture_repo_and_base_paper_are_valid(tmp_path):
    assert problems_for(tmp_path, {"papers/x.yaml": BASE}) == []


CASES = {
    "typo in a key": (
        edit("title:", "titel:"),
        [
            "papers/x.yaml:2: title: missing required field",
            "papers/x.yaml:3: titel: unknown field; did you mean 'title'?",
        ],
    ),
    "missing required field": (
        edit("description: A test description.\n", ""),
        ["papers/x.yaml:2: description: missing required field"],
    ),
    "year as a string": (
        edit("year: 2022", 'year: "2022"'),
        ["papers/x.yaml:8: year: expected an integer, got a string"],
    ),
    "arxiv id not quoted": (
        edit('arxiv: "2201.99999"', "arxiv: 2201.99999"),
        ["papers/x.yaml:9: arxiv: expected a string, got the number 2201.99999; put it in quotes"],
    ),
    "arxiv id with version": (
        edit('arxiv: "2201.99999"', 'arxiv: "2201.99999v2"'),
        [
            "papers/x.yaml:9: arxiv: must be an arXiv id such as '2111.11837' or 'cs/0601001', without a version suffix",
        ],
    ),
    "year too early": (
        edit("year: 2022", "year: 1989"),
        [f"papers/x.yaml:8: year: must be between 1990 and {NEXT_YEAR}"],
    ),
    "year too late": (
        edit("year: 2022", f"year: {NEXT_YEAR + 1}"),
        [f"papers/x.yaml:8: year: must be between 1990 and {NEXT_YEAR}"],
    ),
    "http link": (
        edit("url: https://openaccess", "url: http://openaccess"),
        ["papers/x.yaml:15: links[0].url: URL scheme 'http:' is not allowed; use an https:// URL"],
    ),
    "javascript link": (
        edit("url: https://openaccess.thecvf.com/content/test.html", "url: javascript:alert(1)"),
        ["papers/x.yaml:15: links[0].url: URL scheme 'javascript:' is not allowed; use an https:// URL"],
    ),
    "relative link": (
        edit("url: https://openaccess.thecvf.com/content/test.html", "url: content/test.html"),
        ["papers/x.yaml:15: links[0].url: must be an absolute https:// URL"],
    ),
    "link host does not match its kind": (
        edit("url: https://openaccess.thecvf.com/content/test.html", "url: https://example.com/test.html"),
        [
            "papers/x.yaml:15: links[0].url: host 'example.com' does not match kind 'cvf' (expected openaccess.thecvf.com)"
        ],
    ),
    "unknown link kind": (
        edit("kind: arxiv", "kind: arxv"),
        [
            "papers/x.yaml:16: links[1].kind: must be one of arxiv, cvf, neurips, openreview, ecva, springer, ieee, "
            "sciencedirect, aaai, icml, iclr, pmlr, ijcai, acm, doi; got 'arxv'; did you mean 'arxiv'?"
        ],
    ),
    "arxiv link with a version suffix": (
        edit("url: https://arxiv.org/abs/2201.99999", "url: https://arxiv.org/abs/2201.99999v3"),
        ["papers/x.yaml:17: links[1].url: arXiv links must be https://arxiv.org/abs/<id> with no version suffix"],
    ),
    "arxiv link to the pdf": (
        edit("url: https://arxiv.org/abs/2201.99999", "url: https://arxiv.org/pdf/2201.99999"),
        ["papers/x.yaml:17: links[1].url: arXiv links must be https://arxiv.org/abs/<id> with no version suffix"],
    ),
    "arxiv link and field disagree": (
        edit("url: https://arxiv.org/abs/2201.99999", "url: https://arxiv.org/abs/2201.88888"),
        ["papers/x.yaml:17: links[1].url: arXiv id '2201.88888' does not match the arxiv field ('2201.99999')"],
    ),
    "same link twice in one paper": (
        edit(
            "  - kind: arxiv\n    url: https://arxiv.org/abs/2201.99999\n",
            "  - kind: cvf\n    url: https://openaccess.thecvf.com/content/test.html/\n",
        ),
        ["papers/x.yaml:17: links[1].url: same URL as links[0]"],
    ),
    "code host not accepted": (
        edit("url: https://github.com/test/xkd", "url: https://gitee.com/test/xkd"),
        [
            "papers/x.yaml:19: code[0].url: code host 'gitee.com' is not accepted (github.com, gitlab.com, "
            "huggingface.co); add it to catalog/data/link-kinds.yaml"
        ],
    ),
    "code official not a boolean": (
        edit("official: true", "official: yes please"),
        ["papers/x.yaml:20: code[0].official: expected true or false, got a string"],
    ),
    "doi with its resolver prefix": (
        edit("sections:", "doi: https://doi.org/10.1109/X.1\nsections:"),
        ["papers/x.yaml:10: doi: must be a DOI such as '10.1109/CVPR52688.2022.00460', without 'https://doi.org/'"],
    ),
    "raw HTML in the description": (
        edit("description: A test description.", "description: A <b>test</b> description."),
        ["papers/x.yaml:12: description: raw HTML is not allowed; write plain text"],
    ),
    "Markdown link in the title": (
        edit("title: A Test Paper on Distillation", "title: A [Test](https://example.com) Paper"),
        ["papers/x.yaml:3: title: Markdown link syntax is not allowed; put URLs under links or code"],
    ),
    "leading space in an author": (
        edit("  - Alan Turing", '  - " Alan Turing"'),
        ["papers/x.yaml:6: authors[1]: has leading or trailing spaces"],
    ),
    "double space in the title": (
        edit("title: A Test Paper on Distillation", 'title: "A Test  Paper"'),
        ["papers/x.yaml:3: title: has two spaces in a row"],
    ),
    "description without a period": (
        edit("description: A test description.", "description: A test description"),
        ["papers/x.yaml:12: description: must end with a period"],
    ),
    "line break in the description": (
        edit("description: A test description.", 'description: "A test\\ndescription."'),
        [
            "papers/x.yaml:12: description: must be a single line of plain text (no line breaks, tabs or control characters)"
        ],
    ),
    "empty title": (
        edit("title: A Test Paper on Distillation", 'title: ""'),
        ["papers/x.yaml:3: title: must not be empty"],
    ),
    "no authors": (
        edit("authors:\n  - Ada Byron\n  - Alan Turing\n", "authors: []\n"),
        ["papers/x.yaml:4: authors: must list at least one item"],
    ),
    "unknown section": (
        edit("  - masks", "  - mask"),
        ["papers/x.yaml:11: sections[0]: unknown section 'mask'; did you mean 'masks'?"],
    ),
    "section listed twice": (
        edit("  - masks", "  - masks\n  - masks"),
        ["papers/x.yaml:10: sections: lists the same item twice"],
    ),
    "note for the first section": (
        BASE + "notes:\n  masks: A note.\n",
        [
            "papers/x.yaml:22: notes.masks: the first section shows the description; notes are for the paper's other sections"
        ],
    ),
    "note for a section the paper is not in": (
        BASE + "notes:\n  teacher-free: A note.\n",
        ["papers/x.yaml:22: notes.teacher-free: 'teacher-free' is not one of the paper's sections"],
    ),
    "unknown implementation": (
        BASE + "implementations:\n  - name: ToyLos\n    verification: parity\n",
        ["papers/x.yaml:22: implementations[0].name: kdimpl exports no object named 'ToyLos'; did you mean 'ToyLoss'?"],
    ),
    "private kdimpl name": (
        BASE + "implementations:\n  - name: _hidden\n    verification: parity\n",
        ["papers/x.yaml:22: implementations[0].name: must be a Python identifier"],
    ),
    "name re-exported but not defined by the module": (
        BASE + "implementations:\n  - name: reexported\n    verification: parity\n",
        ["papers/x.yaml:22: implementations[0].name: kdimpl exports no object named 'reexported'"],
    ),
    "unknown verification level": (
        BASE + "implementations:\n  - name: ToyLoss\n    verification: parityy\n",
        [
            "papers/x.yaml:23: implementations[0].verification: must be one of parity, paper, unverified; got 'parityy'; "
            "did you mean 'parity'?"
        ],
    ),
    "implementations and a reason for having none": (
        BASE + "implementations:\n  - name: ToyLoss\n    verification: parity\nno_implementation:\n  reason: pending\n",
        [
            "papers/x.yaml:24: no_implementation: the paper lists implementations: remove no_implementation, "
            "or the implementations if they are wrong"
        ],
    ),
    "unknown reason for having no implementation": (
        BASE + "no_implementation:\n  reason: later\n",
        [
            "papers/x.yaml:22: no_implementation.reason: must be one of survey, no-objective, unreadable, pending; "
            "got 'later'"
        ],
    ),
    "reason note that is not a sentence": (
        BASE + "no_implementation:\n  reason: unreadable\n  note: The PDF is paywalled\n",
        ["papers/x.yaml:23: no_implementation.note: must end with a period"],
    ),
    # What `python -m catalog new` leaves for a person to fill in (catalog/arxiv.py).
    "placeholder description": (
        edit("description: A test description.", "description: 'TODO: say in one or two sentences what it distils'"),
        ["papers/x.yaml:12: description: still a placeholder (TODO ...): fill it in"],
    ),
    "placeholder section": (
        edit("  - masks\n", "  - TODO-section-id\n"),
        ["papers/x.yaml:11: sections[0]: still a placeholder (TODO ...): fill it in"],
    ),
    "placeholder title, author, method, venue and code label": (
        edit("title: A Test", "title: TODO A Test", edit("  - Ada Byron", "  - TODO")).replace(
            "method: XKD", "method: TODO"
        ).replace("venue: CVPR", "venue: TODO-venue").replace("official: true", "official: true\n    label: TODO"),
        [
            "papers/x.yaml:2: method: still a placeholder (TODO ...): fill it in",
            "papers/x.yaml:3: title: still a placeholder (TODO ...): fill it in",
            "papers/x.yaml:5: authors[0]: still a placeholder (TODO ...): fill it in",
            "papers/x.yaml:7: venue: still a placeholder (TODO ...): fill it in",
            "papers/x.yaml:21: code[0].label: still a placeholder (TODO ...): fill it in",
        ],
    ),
    "placeholder verification level": (
        BASE + "implementations:\n  - name: ToyLoss\n    verification: TODO\n",
        ["papers/x.yaml:23: implementations[0].verification: still a placeholder (TODO ...): fill it in"],
    ),
    "TODO later in a text, or as part of a word, is not a placeholder": (
        edit("title: A Test Paper", "title: TODOS and a TODO List in a Test Paper"),
        [],
    ),
    # Mistakes a contributor makes: each is refused with what to do.
    "year with a decimal point": (
        edit("year: 2022", "year: 2022.0"),
        ["papers/x.yaml:8: year: must be a whole number such as 2023; write 2022.0 without the decimal point"],
    ),
    "venue with the year in it and another spelling": (
        edit("venue: CVPR", "venue: Neurips 2023"),
        [
            "papers/x.yaml:7: venue: unknown venue 'Neurips 2023'; write it as 'NeurIPS'; "
            "the year goes in `year`, not in the venue"
        ],
    ),
    "venue in lowercase": (
        edit("venue: CVPR", "venue: cvpr"),
        ["papers/x.yaml:7: venue: unknown venue 'cvpr'; write it as 'CVPR'"],
    ),
    "venue misspelt": (
        edit("venue: CVPR", "venue: ICCVV"),
        [
            "papers/x.yaml:7: venue: unknown venue 'ICCVV'; did you mean 'ICCV'; otherwise use a label of "
            f"catalog/data/venues.yaml ({', '.join(venues())}), or add the venue there with its BibTeX type and "
            "full name"
        ],
    ),
    "venue not in the vocabulary": (
        edit("venue: CVPR", "venue: Workshop on Things"),
        [
            "papers/x.yaml:7: venue: unknown venue 'Workshop on Things'; use a label of catalog/data/venues.yaml "
            f"({', '.join(venues())}), or add the venue there with its BibTeX type and full name"
        ],
    ),
    "two authors joined by and": (
        edit("  - Ada Byron\n  - Alan Turing", "  - Ada Byron and Alan Turing"),
        [
            "papers/x.yaml:5: authors[0]: 'Ada Byron and Alan Turing' names several people; "
            "write one author per '- ' item"
        ],
    ),
    "two authors joined by a comma": (
        edit("  - Ada Byron\n  - Alan Turing", "  - Ada Byron, Alan Turing"),
        ["papers/x.yaml:5: authors[0]: 'Ada Byron, Alan Turing' names several people; write one author per '- ' item"],
    ),
    "two authors joined by a semicolon": (
        edit("  - Ada Byron\n  - Alan Turing", "  - Ada Byron; Alan Turing"),
        ["papers/x.yaml:5: authors[0]: 'Ada Byron; Alan Turing' names several people; write one author per '- ' item"],
    ),
    "two authors joined by an over-indented continuation line": (
        edit("  - Ada Byron\n  - Alan Turing", "  - Ada Byron\n    Alan Turing"),
        [
            "papers/x.yaml:5: authors[0]: YAML joins line 6 to this item, giving 'Ada Byron Alan Turing'; "
            "put each author on its own line starting with '- ', at the same indentation"
        ],
    ),
    "inverted name": (
        edit("  - Alan Turing", "  - Turing, Alan"),
        ["papers/x.yaml:6: authors[1]: 'Turing, Alan' reads as 'Last, First'; write it as 'Alan Turing' (First Last)"],
    ),
    "a name suffix after a comma is a name": (edit("  - Alan Turing", "  - Alan Turing, Jr."), []),
    "description far too long": (
        edit("description: A test description.", "description: " + "Distils features. " * 30 + "End."),
        [
            "papers/x.yaml:12: description: is 544 characters long; "
            "keep it to one or two sentences of at most 400 characters"
        ],
    ),
    "folded description that keeps its final line break": (
        edit("description: A test description.", "description: >\n  A test\n  description."),
        [
            "papers/x.yaml:12: description: ends with a line break: write `>-` instead of `>` "
            "(or `|-` instead of `|`), or one line"
        ],
    ),
    "folded description without the line break": (
        edit("description: A test description.", "description: >-\n  A test\n  description."),
        [],
    ),
    "unquoted colon in the title": (
        edit("title: A Test Paper on Distillation", "title: XKD: A Test Paper"),
        [
            "papers/x.yaml:3: yaml: invalid YAML: mapping values are not allowed in this context; "
            'a value that contains \': \' must be quoted: title: "XKD: A Test Paper"'
        ],
    ),
    "apostrophe inside single quotes": (
        edit("title: A Test Paper on Distillation", "title: 'A Student's Paper'"),
        [
            "papers/x.yaml:3: yaml: invalid YAML: did not find expected key; "
            "a quoted value must end with the quote it starts with; write a ' inside '...' as ''"
        ],
    ),
    "a URL that would close the Markdown link and open another": (
        edit(
            "url: https://openaccess.thecvf.com/content/test.html",
            "url: https://openaccess.thecvf.com/x)[Download_PDF](https://evil.example/login",
        ),
        [
            "papers/x.yaml:15: links[0].url: URL must not contain spaces, ( ) < > [ ] \\ ` or quotes; "
            "percent-encode them (( is %28, ) is %29)"
        ],
    ),
    "a bare web address in the description": (
        edit("description: A test description.", "description: See https://evil.example/login for the code."),
        [
            "papers/x.yaml:12: description: a web address in the text becomes a link on GitHub; "
            "put the URL under links or code"
        ],
    ),
    "a www address in a note": (
        edit("  - masks\n", "  - masks\n  - teacher-free\n") + "notes:\n  teacher-free: Code at www.example.com too.\n",
        [
            "papers/x.yaml:23: notes.teacher-free: a web address in the text becomes a link on GitHub; "
            "put the URL under links or code"
        ],
    ),
    "a code URL with a quote": (
        edit("url: https://github.com/test/xkd", "url: https://github.com/test/xkd\"onclick"),
        [
            "papers/x.yaml:19: code[0].url: URL must not contain spaces, ( ) < > [ ] \\ ` or quotes; "
            "percent-encode them (( is %28, ) is %29)"
        ],
    ),
}


@pytest.mark.parametrize("text, expected", list(CASES.values()), ids=list(CASES))
def test_rule(tmp_path, text, expected):
    assert problems_for(tmp_path, {"papers/x.yaml": text}) == expected


@pytest.mark.parametrize(
    "name", ["year too early", "unknown section", "arxiv link and field disagree", "typo in a key"]
)
def test_full_yaml_parser_reports_the_same_lines(tmp_path, name):
    """A trailing comment sends the file through libyaml instead of the fast reader: same problems."""
    text, expected = CASES[name]
    text = text.replace("venue: CVPR\n", "venue: CVPR  # a comment\n")
    assert problems_for(tmp_path, {"papers/x.yaml": text}) == expected


def test_several_problems_are_reported_at_once(tmp_path):
    text = edit("year: 2022", "year: 1989", edit("titel", "titel", edit("title:", "titel:")))
    text = edit("description: A test description.", "description: no period", text)
    text = edit("venue: CVPR", "venue: Cvpr 2022", edit("  - Alan Turing", "  - Turing, Alan", text))
    # The schema fails, yet the rules on fields of the right type run too: nothing waits for the next run.
    assert problems_for(tmp_path, {"papers/x.yaml": text}) == [
        "papers/x.yaml:2: title: missing required field",
        "papers/x.yaml:3: titel: unknown field; did you mean 'title'?",
        "papers/x.yaml:6: authors[1]: 'Turing, Alan' reads as 'Last, First'; write it as 'Alan Turing' (First Last)",
        "papers/x.yaml:7: venue: unknown venue 'Cvpr 2022'; write it as 'CVPR'; "
        "the year goes in `year`, not in the venue",
        f"papers/x.yaml:8: year: must be between 1990 and {NEXT_YEAR}",
        "papers/x.yaml:12: description: must end with a period",
    ]


FILE_CASES = {
    # libyaml (CSafeLoader) and PyYAML's pure-Python parser word syntax errors differently
    "malformed YAML": (
        "title: [unclosed\nyear: 2022\n",
        [
            (
                "papers/x.yaml:2: yaml: invalid YAML: did not find expected ',' or ']'",
                "papers/x.yaml:2: yaml: invalid YAML: expected ',' or ']', but got '<scalar>'",
            )
        ],
    ),
    "tab indentation": (
        "links:\n\t- kind: cvf\n",
        [
            (
                "papers/x.yaml:2: yaml: invalid YAML: found character that cannot start any token; "
                "indent with spaces, not tabs",
                "papers/x.yaml:2: yaml: invalid YAML: found character '\\t' that cannot start any token; "
                "indent with spaces, not tabs",
            )
        ],
    ),
    "not UTF-8": (
        b"title: caf\xe9\n",
        ["papers/x.yaml:1: (file): not valid UTF-8 (byte 0xe9); save the file as UTF-8"],
    ),
    "byte-order mark": (
        "\ufefftitle: x\n".encode(),
        ["papers/x.yaml:1: (file): starts with a byte-order mark; save as UTF-8 without BOM"],
    ),
    "empty file": ("", ["papers/x.yaml:1: (file): empty file; expected YAML data"]),
    "only a comment": (
        "# yaml-language-server: $schema=../catalog/schema/paper.schema.json\n",
        ["papers/x.yaml:1: (file): empty file; expected YAML data"],
    ),
    "a list instead of a mapping": (
        "- title\n- year\n",
        ["papers/x.yaml:1: (file): expected a mapping of paper fields, got a list"],
    ),
    "a bare string": ("just text\n", ["papers/x.yaml:1: (file): expected a mapping of paper fields, got a string"]),
    "duplicate key": (BASE + "year: 2023\n", ["papers/x.yaml:21: yaml: duplicate key 'year' (first at line 8)"]),
    "python tag": (
        BASE.replace("venue: CVPR", "venue: !!python/object:os.system CVPR"),
        ["papers/x.yaml:7: yaml: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'; write plain values"],
    ),
    "merge key": (
        BASE + "<<: {venue: ICCV}\n",
        ["papers/x.yaml:21: yaml: YAML merge keys (<<) are not supported; write the fields out"],
    ),
    "two documents": (
        BASE + "---\ntitle: again\n",
        ["papers/x.yaml:21: yaml: invalid YAML: but found another document"],
    ),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
        ["papers/x.yaml:1: yaml: document too large or too deeply nested (aliases?)"],
    ),
}


@pytest.mark.parametrize("content, expected", list(FILE_CASES.values()), ids=list(FILE_CASES))
def test_bad_file(tmp_path, content, expected):
    expected = [
        (item[0] if yaml.__with_libyaml__ else item[1]) if isinstance(item, tuple) else item for item in expected
    ]
    assert problems_for(tmp_path, {"papers/x.yaml": content}) == expected


def test_file_name_must_be_an_id(tmp_path):
    assert problems_for(tmp_path, {"papers/X_Paper.yaml": BASE}) == [
        "papers/X_Paper.yaml:1: (file): file name must be <id>.yaml, the id in lowercase letters, digits and '-'"
    ]


def test_only_yaml_files_in_papers(tmp_path):
    assert problems_for(tmp_path, {"papers/x.yml": BASE}) == [
        "papers/x.yml:1: (file): papers/ holds only <id>.yaml files (and _sections.yaml)"
    ]


def test_duplicate_papers(tmp_path):
    same_arxiv = edit(
        "title: A Test Paper on Distillation",
        "title: Another Title",
        edit("https://openaccess.thecvf.com/content/test.html", "https://openaccess.thecvf.com/content/other.html"),
    )
    same_title = edit(
        "title: A Test Paper on Distillation",
        "title: a test paper on distillation!",
        BASE.replace("2201.99999", "2201.77777").replace("content/test", "content/third"),
    )
    same_link = edit(
        "title: A Test Paper on Distillation", "title: A Fourth Paper", BASE.replace("2201.99999", "2201.66666")
    )
    assert problems_for(
        tmp_path,
        {"papers/x.yaml": BASE, "papers/y.yaml": same_arxiv, "papers/z.yaml": same_title, "papers/w.yaml": same_link},
    ) == [
        "papers/w.yaml:15: links[0].url: papers/x.yaml repeats this paper (same paper link); "
        "the problem is reported there",
        "papers/x.yaml:3: title: papers/z.yaml repeats this paper (same paper title); the problem is reported there",
        "papers/x.yaml:9: arxiv: papers/y.yaml repeats this paper (same arXiv id 2201.99999 and paper link); "
        "the problem is reported there",
        "papers/x.yaml:15: links[0].url: same paper as papers/w.yaml (same paper link); delete this file or move what "
        "it adds to papers/w.yaml (reported here because neither file is in README.md yet and this file's name "
        "sorts later)",
        "papers/y.yaml:9: arxiv: same paper as papers/x.yaml (same arXiv id 2201.99999 and paper link); delete this "
        "file or move what it adds to papers/x.yaml (reported here because neither file is in README.md yet and "
        "this file's name sorts later)",
        "papers/z.yaml:3: title: same paper as papers/x.yaml (same paper title); delete this file or move what it "
        "adds to papers/x.yaml (reported here because neither file is in README.md yet and this file's name sorts "
        "later)",
    ]


def test_duplicate_is_reported_on_the_file_not_yet_in_the_readme(tmp_path):
    """The paper already listed in README.md is the original, even when the new file's name sorts first."""
    root = make_repo(tmp_path)
    (root / "README.md").write_text(
        "\\[[CVF](https://openaccess.thecvf.com/content/test.html)\\]\n\\[[arXiv](https://arxiv.org/abs/2201.99999)\\]\n",
        encoding="utf-8",
    )
    (root / "papers" / "x.yaml").write_text(BASE, encoding="utf-8")
    copy = edit("https://openaccess.thecvf.com/content/test.html", "https://openaccess.thecvf.com/content/new.html")
    (root / "papers" / "a-copy.yaml").write_text(copy, encoding="utf-8")
    assert [str(problem) for problem in validate_root(root).problems] == [
        "papers/a-copy.yaml:9: arxiv: same paper as papers/x.yaml (same arXiv id 2201.99999, paper title and paper "
        "link); delete this file or move what it adds to papers/x.yaml (reported here because papers/x.yaml is "
        "already in README.md)",
        "papers/x.yaml:9: arxiv: papers/a-copy.yaml repeats this paper (same arXiv id 2201.99999, paper title and "
        "paper link); the problem is reported there",
    ]


def test_same_doi_is_a_duplicate(tmp_path):
    first = BASE.replace("sections:", "doi: 10.1109/X.1\nsections:")
    second = edit(
        "title: A Test Paper on Distillation", "title: Another Paper", first.replace("2201.99999", "2201.11111")
    )
    second = second.replace("content/test", "content/second").replace("10.1109/X.1", "10.1109/x.1")
    assert problems_for(tmp_path, {"papers/x.yaml": first, "papers/y.yaml": second}) == [
        "papers/x.yaml:10: doi: papers/y.yaml repeats this paper (same DOI 10.1109/x.1); the problem is reported there",
        "papers/y.yaml:10: doi: same paper as papers/x.yaml (same DOI 10.1109/x.1); delete this file or move what it "
        "adds to papers/x.yaml (reported here because neither file is in README.md yet and this file's name sorts "
        "later)",
    ]


SECTION_CASES = {
    "unknown key": (
        "- id: general\n  titel: General\n",
        [
            "papers/_sections.yaml:1: [0].title: missing required field",
            "papers/_sections.yaml:2: [0].titel: unknown field; did you mean 'title'?",
        ],
    ),
    "duplicate id": (
        "- id: general\n  title: General\n- id: general\n  title: Other\n",
        ["papers/_sections.yaml:3: [1].id: duplicate section id 'general' (first at line 1)"],
    ),
    "title with symbols": (
        "- id: general\n  title: General & Co.\n",
        [
            "papers/_sections.yaml:2: [0].title: section titles use ASCII letters, digits, single "
            "spaces and '-' only (they become GitHub anchors)"
        ],
    ),
    "reserved title": (
        "- id: contents\n  title: Contents\n",
        ["papers/_sections.yaml:2: [0].title: 'Contents' is reserved for a README section"],
    ),
    "too deep": (
        "- id: a\n  title: A\n  children:\n    - id: b\n      title: B\n      children:\n"
        "        - id: c\n          title: C\n          children:\n            - id: d\n              title: D\n"
        "              children:\n                - id: e\n                  title: E\n",
        [
            "papers/_sections.yaml:13: [0].children[0].children[0].children[0].children[0]: "
            "sections nest at most four levels (## to #####)"
        ],
    ),
}


@pytest.mark.parametrize("content, expected", list(SECTION_CASES.values()), ids=list(SECTION_CASES))
def test_sections_file(tmp_path, content, expected):
    root = make_repo(tmp_path)
    (root / "papers" / "_sections.yaml").write_text(content, encoding="utf-8")
    for paper in (root / "papers").glob("[a-z]*.yaml"):
        paper.unlink()
    assert [str(problem) for problem in validate_root(root).problems] == expected


def test_missing_sections_file(tmp_path):
    root = make_repo(tmp_path)
    (root / "papers" / "_sections.yaml").unlink()
    problems = [str(problem) for problem in validate_root(root).problems]
    assert problems[0] == "papers/_sections.yaml:1: (file): missing: the section tree is required"


def test_catalog_keeps_papers_that_loaded(tmp_path):
    root = make_repo(tmp_path)
    (root / "papers" / "x.yaml").write_text(edit("title:", "titel:"), encoding="utf-8")
    result = validate_root(root)
    assert sorted(paper.id for paper in result.catalog.papers) == ["alpha", "beta", "delta", "gamma"]
    assert len(result.problems) == 2


def test_a_second_check_in_one_process_sees_every_change(tmp_path):
    """validate_root reuses unchanged files' results within a process: edits must still be seen."""
    root = make_repo(tmp_path)
    paper = root / "papers" / "x.yaml"
    paper.write_text(BASE + "implementations:\n  - name: ToyLoss\n    verification: parity\n", encoding="utf-8")
    assert validate_root(root).problems == []
    assert [str(p) for p in validate_root(root).problems] == []  # reused, still clean
    paper.write_text(edit("year: 2022", f"year: {NEXT_YEAR + 1}") + "implementations:\n  - name: ToyLoss\n"
                     "    verification: parity\n", encoding="utf-8")
    expected = [f"papers/x.yaml:8: year: must be between 1990 and {NEXT_YEAR}"]
    assert [str(p) for p in validate_root(root).problems] == expected
    assert [str(p) for p in validate_root(root).problems] == expected  # reused: reported once, not twice
    # The paper did not change, but kdimpl did: its implementation is checked again.
    (root / "kdimpl" / "losses" / "toy.py").write_text(TOY.replace('"ToyLoss", ', ""), encoding="utf-8")
    problems = [str(p) for p in validate_root(root).problems]
    missing = "implementations[0].name: kdimpl exports no object named 'ToyLoss'; did you mean 'toy_loss'?"
    assert expected[0] in problems and f"papers/x.yaml:22: {missing}" in problems
    assert any(p.startswith("papers/alpha.yaml:") and p.endswith(missing) for p in problems)  # unchanged file
    # A new section tree changes which section ids are known.
    sections = root / "papers" / "_sections.yaml"
    text = sections.read_text(encoding="utf-8")
    sections.write_text(text.replace("id: masks", "id: masks-renamed"), encoding="utf-8")
    assert any("unknown section 'masks'" in str(p) for p in validate_root(root).problems)


def test_kdimpl_exports_registered_by_decorator(tmp_path):
    """``@register_loss(name, function=f)`` exports the class and ``f`` without an ``__all__``."""
    root = make_repo(tmp_path)
    (root / "kdimpl" / "losses" / "reg.py").write_text(
        "from .._registry import register_loss\n\n\ndef reg_loss(s, t):\n    return 0\n\n\n"
        '@register_loss("reg", function=reg_loss)\nclass RegLoss:\n    pass\n',
        encoding="utf-8",
    )
    paper = BASE + (
        "implementations:\n  - name: RegLoss\n    verification: paper\n  - name: reg_loss\n    verification: paper\n"
    )
    (root / "papers" / "x.yaml").write_text(paper, encoding="utf-8")
    assert validate_root(root).problems == []


def test_yaml_hints_in_the_sections_file(tmp_path):
    root = make_repo(tmp_path)
    (root / "papers" / "_sections.yaml").write_text("- id: general\n  title: General: Detectors\n", encoding="utf-8")
    assert [str(problem) for problem in validate_root(root).problems][0] == (
        "papers/_sections.yaml:2: yaml: invalid YAML: mapping values are not allowed in this context; "
        'a value that contains \': \' must be quoted: title: "General: Detectors"'
    )


def test_an_exact_copy_is_reported_on_the_name_that_sorts_later(tmp_path):
    root = make_repo(tmp_path)
    (root / "README.md").write_text(
        "\\[[CVF](https://openaccess.thecvf.com/content/test.html)\\]\n\\[[arXiv](https://arxiv.org/abs/2201.99999)\\]\n",
        encoding="utf-8",
    )
    (root / "papers" / "x.yaml").write_text(BASE, encoding="utf-8")
    (root / "papers" / "a-copy.yaml").write_text(BASE, encoding="utf-8")
    problems = [str(problem) for problem in validate_root(root).problems]
    assert len(problems) == 2
    assert problems[1].startswith("papers/x.yaml:9: arxiv: same paper as papers/a-copy.yaml")
    assert problems[1].endswith("(reported here because README.md cannot tell the two files apart and this file's "
                                "name sorts later)")
    assert problems[0].startswith("papers/a-copy.yaml:9: arxiv: papers/x.yaml repeats this paper")


def test_a_contributors_mistakes_are_reported_together(tmp_path):
    text = edit("year: 2022", "year: 2022.0", edit("venue: CVPR", "venue: Neurips 2023"))
    text = edit("  - Ada Byron\n  - Alan Turing", "  - Byron, Ada\n  - Alan Turing and Grace Hopper", text)
    text = edit("url: https://github.com/test/xkd", "url: https://github.com/test/xkd)[x](https://evil.example", text)
    assert problems_for(tmp_path, {"papers/x.yaml": text}) == [
        "papers/x.yaml:5: authors[0]: 'Byron, Ada' reads as 'Last, First'; write it as 'Ada Byron' (First Last)",
        "papers/x.yaml:6: authors[1]: 'Alan Turing and Grace Hopper' names several people; "
        "write one author per '- ' item",
        "papers/x.yaml:7: venue: unknown venue 'Neurips 2023'; write it as 'NeurIPS'; "
        "the year goes in `year`, not in the venue",
        "papers/x.yaml:8: year: must be a whole number such as 2023; write 2022.0 without the decimal point",
        "papers/x.yaml:19: code[0].url: URL must not contain spaces, ( ) < > [ ] \\ ` or quotes; "
        "percent-encode them (( is %28, ) is %29)",
    ]


def test_iclr_proceedings_poster_and_openreview_links(tmp_path):
    iclr = edit(
        "  - kind: cvf\n    url: https://openaccess.thecvf.com/content/test.html\n",
        "  - kind: iclr\n    url: https://proceedings.iclr.cc/paper_files/paper/2025/hash/x-Abstract-Conference.html\n"
        "  - kind: iclr\n    url: https://iclr.cc/virtual/2025/poster/1\n"
        "  - kind: openreview\n    url: https://openreview.net/forum?id=abc\n",
        edit("venue: CVPR", "venue: ICLR"),
    )
    assert problems_for(tmp_path, {"papers/x.yaml": iclr}) == []
    wrong = edit("kind: openreview", "kind: iclr", iclr)
    assert problems_for(tmp_path / "wrong", {"papers/x.yaml": wrong}) == [
        "papers/x.yaml:19: links[2].url: host 'openreview.net' does not match kind 'iclr' "
        "(expected proceedings.iclr.cc or iclr.cc)"
    ]


def journal(target: str, text: str = BASE) -> str:
    """BASE as a journal version that extends ``target`` (``extends`` on line 10)."""
    return edit('arxiv: "2201.99999"\n', f'arxiv: "2201.99999"\nextends: {target}\n', edit("venue: CVPR", "venue: TPAMI", text))


def other_paper(text: str) -> str:
    """A second, different paper (no duplicate of BASE)."""
    return (
        text.replace("2201.99999", "2201.88888")
        .replace("A Test Paper on Distillation", "Another Test Paper")
        .replace("content/test.html", "content/other.html")
    )


def test_a_journal_version_extends_a_conference_paper(tmp_path):
    assert problems_for(tmp_path, {"papers/x.yaml": journal("alpha")}) == []


@pytest.mark.parametrize(
    "target, message",
    [
        ("alpah", "unknown paper id 'alpah'; did you mean 'alpha'?"),
        ("zzz", "unknown paper id 'zzz'; write the id of the conference paper (its file name in papers/ without .yaml)"),
        ("x", "a paper cannot extend itself; write the id of the conference paper it extends"),
        (
            "gamma",
            "shares no section with 'gamma' (heterogeneous); add its first section 'heterogeneous' to sections, "
            "where the two are listed together",
        ),
        ("Alpha", "must be a paper id (its file name without .yaml): lowercase letters, digits and '-'"),
    ],
)
def test_extends_problems(tmp_path, target, message):
    assert problems_for(tmp_path, {"papers/x.yaml": journal(target)}) == [f"papers/x.yaml:10: extends: {message}"]


def test_only_a_journal_version_extends(tmp_path):
    conference = edit("venue: TPAMI", "venue: ICCV", journal("alpha"))
    assert problems_for(tmp_path, {"papers/x.yaml": conference}) == [
        "papers/x.yaml:10: extends: only a journal version extends a conference paper, and 'ICCV' is not a journal "
        "in catalog/data/venues.yaml; remove extends, or put it in the journal version's file"
    ]


def test_extensions_do_not_chain_or_cycle(tmp_path):
    chained = problems_for(tmp_path, {"papers/x.yaml": journal("alpha"), "papers/y.yaml": other_paper(journal("x"))})
    assert chained == [
        "papers/y.yaml:10: extends: 'x' is itself an extension of 'alpha'; extensions do not chain: name the original "
        "conference paper, and remove extends from one of the two files if they name each other"
    ]
    cycle = problems_for(tmp_path / "cycle", {"papers/x.yaml": journal("y"), "papers/y.yaml": other_paper(journal("x"))})
    assert [problem.split(": extends: ")[0] for problem in cycle] == ["papers/x.yaml:10", "papers/y.yaml:10"]
    assert all("is itself an extension of" in problem for problem in cycle)


def test_extending_a_file_that_fails_the_schema_is_reported_once(tmp_path):
    broken = other_paper(BASE).replace("title: Another Test Paper\n", "")
    problems = problems_for(tmp_path, {"papers/x.yaml": journal("broken"), "papers/broken.yaml": broken})
    assert problems == ["papers/broken.yaml:2: title: missing required field"]

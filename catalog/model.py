"""The catalog's data model: what one paper file and the section tree hold.

These classes are plain, immutable records. :mod:`catalog.loader` builds them from
validated YAML; every other module (render, links, bibtex, importer) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: How each implementation was checked, in the order of the strength of the claim.
VERIFICATION_LEVELS = ("parity", "paper", "unverified")

#: Why a paper has no implementation in kdimpl (``no_implementation.reason``), with the words the README uses.
NO_IMPLEMENTATION_REASONS = {
    "survey": "a survey, with no objective of its own",
    "no-objective": "it proposes no distillation objective",
    "unreadable": "neither its text nor its code could be read",
    "pending": "not implemented yet",
}


@dataclass(frozen=True)
class Link:
    """A link to the paper itself (publisher page, preprint, proceedings)."""

    kind: str  # key of catalog.links_kinds.PAPER_LINK_KINDS, e.g. "arxiv", "cvf"
    url: str
    label: str  # text shown in the README, e.g. "arXiv", "CVF"


@dataclass(frozen=True)
class CodeLink:
    """A link to code: the authors' own (``official``) or a third party's."""

    url: str
    label: str  # text shown in the README, e.g. "GitHub", "MMDet"
    official: bool = True


@dataclass(frozen=True)
class Implementation:
    """A reference implementation of the paper's loss in :mod:`kdimpl`."""

    name: str  # an object exported by kdimpl, e.g. "FGDLoss"
    verification: str  # one of VERIFICATION_LEVELS
    covers: str = ""  # for a framework's component: what the object implements and what it leaves out


@dataclass(frozen=True)
class NoImplementation:
    """Why kdimpl does not implement the paper."""

    reason: str  # a key of NO_IMPLEMENTATION_REASONS
    note: str = ""


@dataclass(frozen=True)
class Paper:
    """One paper: the content of ``papers/<id>.yaml``."""

    id: str  # the file's stem
    title: str
    authors: tuple[str, ...]
    year: int
    sections: tuple[str, ...]  # section ids; the first is where the entry is written in full
    description: str
    links: tuple[Link, ...]
    method: str | None = None  # short method name ("FGD"); None when the paper has none
    venue: str | None = None  # short venue ("CVPR", "TPAMI", "arXiv")
    arxiv: str | None = None  # arXiv identifier without version, e.g. "2111.11837"
    doi: str | None = None
    extends: str | None = None  # id of the conference paper this journal version extends
    code: tuple[CodeLink, ...] = ()
    implementations: tuple[Implementation, ...] = ()
    no_implementation: NoImplementation | None = None
    notes: dict[str, str] = field(default_factory=dict)  # section id -> text shown there instead of the description
    path: str = ""  # repository-relative path of the source file, for messages


@dataclass(frozen=True)
class Section:
    """One node of the section tree (``sections.yaml``)."""

    id: str
    title: str
    level: int  # 2 for top-level sections (## in the README), 3, 4, 5 below
    intro: str = ""
    children: tuple["Section", ...] = ()


@dataclass(frozen=True)
class Catalog:
    """Everything the renderers need."""

    papers: tuple[Paper, ...]
    sections: tuple[Section, ...]  # top-level sections, in order
    root: str = "."

    def walk_sections(self):
        """Yield every section, depth first, in README order."""
        stack = list(reversed(self.sections))
        while stack:
            section = stack.pop()
            yield section
            stack.extend(reversed(section.children))

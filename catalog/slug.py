"""GitHub's heading anchors: a Python port of github-slugger 2.0.0.

GitHub gives every rendered heading the id ``user-content-<slug>`` and resolves ``#<slug>`` to it.
The slug is computed from the heading's plain text (after Markdown rendering):

1. lowercase (full Unicode mapping);
2. delete every code point whose general category is Other_Number, any punctuation except
   connector punctuation (``_``) and the ASCII hyphen-minus, any symbol, control, format,
   private-use or unassigned code point, and any separator except the ASCII space; code points
   with the Unicode *Alphabetic* property (e.g. circled letters) are kept;
3. replace each ASCII space with ``-`` (no collapsing, no trimming);
4. make it unique within the document: the n-th repeat of ``base`` becomes ``base-n``, skipping
   values already taken (one counter per base, shared by all heading levels).

github-slugger builds its regex from Unicode 13 data; Python's :mod:`unicodedata` is newer, so
code points assigned after Unicode 13 are kept here where GitHub deletes them. Section titles are
restricted to a conservative character set by :mod:`catalog.validate`, so that never matters for
this catalog. ``tests/catalog/test_slug.py`` runs github-slugger's own fixtures.
"""

from __future__ import annotations

import unicodedata

_DELETED_CATEGORIES = frozenset(
    {"No", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Cc", "Cf", "Co", "Cn", "Cs", "Zs", "Zl", "Zp"}
)
_KEPT = frozenset("- ")

# Code points in a deleted category that carry the Other_Alphabetic property (Unicode PropList):
# circled Latin letters and the squared / negative circled / negative squared Latin capitals.
_ALPHABETIC_SYMBOL_RANGES = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))


def _is_alphabetic_symbol(code: int) -> bool:
    return any(low <= code <= high for low, high in _ALPHABETIC_SYMBOL_RANGES)


def _deleted(char: str) -> bool:
    if char in _KEPT:
        return False
    if unicodedata.category(char) not in _DELETED_CATEGORIES:
        return False
    return not _is_alphabetic_symbol(ord(char))


def slug(text: str) -> str:
    """The anchor GitHub derives from heading text, without the uniqueness suffix."""
    if not isinstance(text, str):
        return ""
    lowered = text.lower()
    return "".join(char for char in lowered if not _deleted(char)).replace(" ", "-")


class Slugger:
    """Unique slugs for the headings of one document, in document order (github-slugger's ``slug``)."""

    def __init__(self) -> None:
        self.occurrences: dict[str, int] = {}

    def slug(self, text: str) -> str:
        base = slug(text)
        result = base
        while result in self.occurrences:
            self.occurrences[base] += 1
            result = f"{base}-{self.occurrences[base]}"
        self.occurrences[result] = 0
        return result

    def reset(self) -> None:
        self.occurrences.clear()

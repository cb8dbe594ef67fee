"""The one definition of "same title" and of "URL host", shared by every command.

``check`` (duplicate papers), ``new`` and ``verify`` (arXiv), ``import-markdown`` and ``links``
(per-host limits) all compare titles and hosts through these functions, so they cannot disagree.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def title_key(title: str) -> str:
    """Titles that differ only in case, accents, spacing or punctuation have the same key.

    NFKD, accents (combining marks) dropped, casefolded, every non-alphanumeric character removed:
    ``title_key("Résumé: Real-Time")`` == ``title_key("resume realtime")``.
    """
    decomposed = unicodedata.normalize("NFKD", title)
    folded = "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()
    return "".join(char for char in folded if char.isalnum())


def same_title(first: str, second: str) -> bool:
    """Whether two titles name the same paper (see :func:`title_key`)."""
    return title_key(first) == title_key(second)


def normalise_host(host: str) -> str:
    """``Example.COM.`` and ``bücher.example`` as one spelling: lowercase, IDNA (punycode), no trailing dot."""
    host = host.strip().rstrip(".").lower()
    if not host or host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDNA name: keep the lowercase spelling
        return host


def url_host(url: str) -> str:
    """The normalised host of a URL (see :func:`normalise_host`); ``''`` when it has none."""
    try:
        host = urlsplit(url).hostname
    except ValueError:  # e.g. an unbalanced "[" in the netloc
        return ""
    return normalise_host(host or "")


def host_key(url: str) -> str:
    """The per-host bucket of a URL: its host, plus its port when that is not the scheme's default."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url_host(url)
    host = normalise_host(parts.hostname or "")
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(parts.scheme.lower()):
        return host
    return f"{host}:{port}"

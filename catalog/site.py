"""The browsable site: one static page with search and filters, rendered from the catalog.

``templates/site/index.html.j2`` renders every paper as HTML (Jinja autoescaping); the page also
embeds the search and filter fields as JSON, so ``site.js`` filters the list with MiniSearch
without fetching anything (``fetch`` of local files is blocked under ``file://``). MiniSearch is
copied from ``node_modules`` (pinned in ``package.json``, installed by ``npm ci``): no CDN.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jinja2

from catalog.kdimpl_index import scan
from catalog.model import NO_IMPLEMENTATION_REASONS, VERIFICATION_LEVELS, Catalog, Paper, Section
from catalog.render import TITLE, VERIFICATION_WORDS, extensions, sort_key, statistics

TEMPLATES = "templates/site"
PAGE = "index.html.j2"
STATIC = ("site.js", "site.css")
MINISEARCH = "node_modules/minisearch"
MINISEARCH_SCRIPT = "dist/umd/index.js"
REPOSITORY = "https://github.com/LutingWang/awesome-knowledge-distillation-for-object-detection"


class SiteError(Exception):
    """The site could not be rendered (missing MiniSearch or template, template error); nothing was written."""


def api_target(name: str, path: str) -> str:
    """``kdimpl/losses/fgd.py`` and ``FGDLoss`` -> ``kdimpl.losses.fgd.html#kdimpl.losses.fgd.FGDLoss`` (Sphinx's names)."""
    parts = PurePosixPath(path).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return f"{module}.html#{module}.{name}"


def _web_url(url: str) -> str | None:
    return url if urlsplit(url).scheme in ("http", "https") else None


def _ancestors(sections: tuple[Section, ...]) -> dict[str, list[str]]:
    """Section id -> the ids of the section and every section above it."""
    paths: dict[str, list[str]] = {}

    def walk(section: Section, above: list[str]) -> None:
        paths[section.id] = above + [section.id]
        for child in section.children:
            walk(child, paths[section.id])

    for section in sections:
        walk(section, [])
    return paths


def _ordered(catalog: Catalog) -> list[Paper]:
    """The README's order: by first section in section order, then year, title and id."""
    position = {section.id: index for index, section in enumerate(catalog.walk_sections())}
    return sorted(catalog.papers, key=lambda paper: (position.get(paper.sections[0], len(position)), sort_key(paper)))


def paper_view(paper: Paper, titles: dict[str, str], kdimpl_files: dict[str, str], api_base: str, repository: str) -> dict:
    """What the template shows for one paper (plain text: the template escapes it)."""
    implementations = []
    for impl in paper.implementations:
        path = kdimpl_files.get(impl.name)
        implementations.append({
            "name": impl.name,
            "verification": impl.verification,
            "verification_words": VERIFICATION_WORDS[impl.verification],
            "covers": impl.covers,
            "source": f"{repository}/blob/main/{path}" if path and repository else None,
            "api": api_base + api_target(impl.name, path) if path else None,
        })
    return {
        "id": paper.id,
        "method": paper.method,
        "title": paper.title,
        "authors": paper.authors,
        "venue": paper.venue,
        "year": paper.year,
        "description": paper.description,
        "links": [{"label": link.label, "url": url} for link in paper.links if (url := _web_url(link.url))],
        "code": [
            {"label": code.label, "url": url, "official": code.official}
            for code in paper.code if (url := _web_url(code.url))
        ],
        "implementations": implementations,
        "no_implementation": _no_implementation_words(paper),
        "sections": [{"id": section, "title": titles.get(section, section)} for section in paper.sections],
    }


def _no_implementation_words(paper: Paper) -> str:
    if paper.implementations or paper.no_implementation is None:
        return ""
    return paper.no_implementation.note or NO_IMPLEMENTATION_REASONS[paper.no_implementation.reason]


def search_record(paper: Paper, ancestors: dict[str, list[str]]) -> dict:
    """The fields ``site.js`` searches and filters on."""
    sections = [section for own in paper.sections for section in ancestors.get(own, [own])]
    return {
        "id": paper.id,
        "method": paper.method or "",
        "title": paper.title,
        "authors": list(paper.authors),
        "description": paper.description,
        "year": paper.year,
        "venue": paper.venue or "",
        "sections": list(dict.fromkeys(sections)),
        "official": any(code.official for code in paper.code),
        "levels": sorted({impl.verification for impl in paper.implementations}, key=VERIFICATION_LEVELS.index),
    }


def _relate_extensions(views: list[dict], catalog: Catalog) -> None:
    """Journal versions (``extends``) and the conference papers they extend point to each other."""
    index = {view["id"]: view for view in views}
    for view in views:
        view["extends"], view["extensions"] = None, []
    for conference_id, journals in extensions(catalog).items():
        conference = index[conference_id]
        for journal in journals:
            index[journal.id]["extends"] = {"id": conference_id, "name": _short_name(conference)}
            conference["extensions"].append({"id": journal.id, "name": _short_name(index[journal.id])})


def _short_name(view: dict) -> str:
    when = f"{view['venue']} {view['year']}" if view["venue"] else str(view["year"])
    return f"{view['method'] or view['title']} ({when})"


def build_site_view(catalog: Catalog, kdimpl_files: dict[str, str], api_base: str = "api/",
                    repository: str = REPOSITORY) -> dict:
    """The page template's context."""
    titles = {section.id: section.title for section in catalog.walk_sections()}
    ancestors = _ancestors(catalog.sections)
    papers = _ordered(catalog)
    views = [paper_view(paper, titles, kdimpl_files, api_base, repository) for paper in papers]
    _relate_extensions(views, catalog)
    return {
        "title": TITLE,
        "repository": repository,
        "api_base": api_base,
        "stats": statistics(catalog),
        "papers": views,
        "records": [search_record(paper, ancestors) for paper in papers],
        "sections": [{"id": section.id, "title": section.title, "depth": section.level - 2}
                     for section in catalog.walk_sections()],
        "years": sorted({paper.year for paper in catalog.papers}),
        "venues": sorted({paper.venue for paper in catalog.papers if paper.venue}, key=str.casefold),
        "levels": [{"id": level, "words": VERIFICATION_WORDS[level]} for level in VERIFICATION_LEVELS],
    }


def minisearch_script(root: Path) -> str:
    """MiniSearch's browser build from ``node_modules``, checked against the version ``package.json`` pins."""
    package = root / MINISEARCH
    try:
        installed = json.loads((package / "package.json").read_text(encoding="utf-8"))["version"]
        script = (package / MINISEARCH_SCRIPT).read_text(encoding="utf-8")
    except (OSError, ValueError, KeyError) as error:
        raise SiteError(f"MiniSearch is not installed ({MINISEARCH}/{MINISEARCH_SCRIPT}: "
                        f"{getattr(error, 'strerror', None) or error}); run `npm ci` first") from error
    try:
        manifest = json.loads((root / "package.json").read_text(encoding="utf-8"))
        pinned = {**manifest.get("devDependencies", {}), **manifest.get("dependencies", {})}.get("minisearch")
    except (OSError, ValueError) as error:
        raise SiteError(f"cannot read package.json: {error}") from error
    if pinned != installed:
        raise SiteError(f"package.json pins minisearch {pinned}, node_modules has {installed}; run `npm ci`")
    script = "\n".join(line for line in script.splitlines() if not line.startswith("//# sourceMappingURL="))
    notice = f"/*! MiniSearch {installed} | MIT License | https://github.com/lucaong/minisearch */"
    return f"{notice}\n{script}\n"


def _environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root / TEMPLATES)),
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_site(catalog: Catalog, root: Path, kdimpl_files: dict[str, str] | None = None, api_base: str = "api/",
                repository: str = REPOSITORY) -> dict[str, str]:
    """Every file of the site, rendered in memory: ``{name: text}``. Raises :class:`SiteError`."""
    root = Path(root)
    files = {"minisearch.js": minisearch_script(root)}
    try:
        if kdimpl_files is None:
            kdimpl_files = scan(root) if any(paper.implementations for paper in catalog.papers) else {}
        environment = _environment(root)
        view = build_site_view(catalog, kdimpl_files, api_base, repository)
        files["index.html"] = environment.get_template(PAGE).render(**view)
        for name in STATIC:
            files[name] = (root / TEMPLATES / name).read_text(encoding="utf-8")
    except Exception as error:  # a template or data error must not leave a traceback or half a site
        raise SiteError(f"rendering the site failed: {type(error).__name__}: {error}") from error
    return files

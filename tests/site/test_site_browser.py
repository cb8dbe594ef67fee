"""The site in headless Chromium (Playwright driving the system's browser): search, filters, URL state.

Skipped where Playwright for Python or a Chromium binary is missing (see :mod:`tests.site.browser`).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.site.browser import launched, skip_reason, watched_page
from tests.site.sitebuild import FIXTURE_IDS, build_site, make_site_repo

if reason := skip_reason():
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def index_url(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("site")
    return build_site(make_site_repo(tmp), tmp / "out").as_uri()


@pytest.fixture(scope="module")
def browser():
    with launched() as instance:
        yield instance


@pytest.fixture
def page(browser):
    """A fresh page; the test fails on any uncaught exception, console error or request off the disk (a CDN)."""
    with watched_page(browser) as (tab, errors):
        yield tab
    assert errors == []


def visible(page) -> set[str]:
    return set(page.locator("article.paper:visible").evaluate_all("nodes => nodes.map(node => node.id)"))


def url(page) -> str:
    """The address as the page sees it (``history.replaceState`` included)."""
    return page.evaluate("() => location.href")


def params(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url(page)).query)


def test_every_paper_is_listed(page, index_url):
    page.goto(index_url)
    assert visible(page) == FIXTURE_IDS
    assert page.locator("#site_filters").is_visible()
    assert page.inner_text("#result_count") == f"{len(FIXTURE_IDS)} papers"
    assert urlsplit(url(page)).query == ""


@pytest.mark.parametrize("text, expected", [
    ("knuth", {"delta"}),  # an author
    ("gamma", {"gamma"}),  # a method name
    ("heterogen", {"gamma"}),  # a prefix of a title word
    ("masks", {"delta"}),  # a title and description word
    ("distillation", {"beta", "alpha"}),  # titles and descriptions
    ("teacher foreground", {"alpha"}),  # every word must match
    ("zzzz", set()),
])
def test_typing_in_the_search_box_narrows_the_list_and_updates_the_url(page, index_url, text, expected):
    page.goto(index_url)
    page.locator("input[type=search]").press_sequentially(text)
    assert visible(page) == expected
    assert params(page)["q"] == [text]
    assert page.inner_text("#result_count") == f"{len(expected)} of {len(FIXTURE_IDS)} papers"


@pytest.mark.parametrize("name, value, expected", [
    ("section", "general", {"alpha", "beta", "delta"}),  # subsections included
    ("section", "masks", {"alpha", "delta"}),
    ("section", "teacher-free", {"alpha"}),  # a paper's second section counts
    ("from", "2022", {"alpha", "gamma"}),
    ("to", "2021", {"beta", "delta"}),
    ("venue", "ECCV", {"gamma"}),
    ("impl", "yes", {"alpha", "gamma", "delta"}),
    ("impl", "no", {"beta"}),
    ("verification", "parity", {"alpha"}),
    ("verification", "paper", {"delta"}),
    ("verification", "unverified", {"gamma"}),
])
def test_each_select_filter(page, index_url, name, value, expected):
    page.goto(index_url)
    page.select_option(f"#filter_{name}", value)
    assert visible(page) == expected
    assert params(page) == {name: [value]}


def test_the_official_code_filter(page, index_url):
    page.goto(index_url)
    page.check("#filter_code")
    assert visible(page) == {"alpha"}  # gamma has only third-party code
    assert params(page) == {"code": ["official"]}
    page.uncheck("#filter_code")
    assert visible(page) == FIXTURE_IDS
    assert urlsplit(url(page)).query == ""


def test_filters_combine_and_clear(page, index_url):
    page.goto(index_url)
    page.select_option("#filter_section", "general")
    page.select_option("#filter_from", "2021")
    assert visible(page) == {"alpha", "delta"}
    page.fill("#filter_q", "delta")
    assert visible(page) == {"delta"}
    assert params(page) == {"section": ["general"], "from": ["2021"], "q": ["delta"]}
    page.click("#filter_reset")
    page.wait_for_function("() => location.search === ''")
    assert visible(page) == FIXTURE_IDS
    assert page.input_value("#filter_q") == ""


@pytest.mark.parametrize("query, expected", [
    ("q=gamma", {"gamma"}),
    ("section=masks&verification=paper", {"delta"}),
    ("from=2017&to=2021&impl=no", {"beta"}),
    ("code=official&q=alpha", {"alpha"}),
    ("venue=NoSuchVenue", FIXTURE_IDS),  # unknown values are ignored, not an empty list
])
def test_a_url_with_a_query_reproduces_the_view(page, index_url, query, expected):
    page.goto(f"{index_url}?{query}")
    assert visible(page) == expected
    for name, values in parse_qs(query).items():
        control = page.locator(f"#filter_{name}")
        if name == "code":
            assert control.is_checked()
        elif name != "venue":
            assert control.input_value() == values[0]


def test_a_paper_anchor_survives_filtering(page, index_url):
    page.goto(f"{index_url}?section=masks#delta")
    assert visible(page) == {"alpha", "delta"}
    assert page.evaluate("() => document.querySelector(':target').id") == "delta"
    page.fill("#filter_q", "knuth")
    assert urlsplit(url(page)).fragment == "delta"
    assert params(page) == {"section": ["masks"], "q": ["knuth"]}


def test_a_section_name_filters_in_place(page, index_url):
    page.goto(index_url)
    page.locator("#gamma a.section").click()
    assert visible(page) == {"gamma"}
    assert params(page) == {"section": ["heterogeneous"]}
    assert page.input_value("#filter_section") == "heterogeneous"


def test_search_results_come_by_relevance(page, index_url):
    page.goto(f"{index_url}?q=delta")
    order = page.locator("article.paper").evaluate_all("nodes => nodes.map(node => node.id)")
    assert order[0] == "delta"

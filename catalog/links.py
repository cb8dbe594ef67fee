"""``python -m catalog links``: check every URL of ``papers/`` and classify it.

Classes (``status`` in the JSON report):

- ``ok``: the final answer is 2xx (temporary redirects on the way are fine);
- ``redirected``: 2xx, but reached through permanent redirects (301/308); ``suggested_url`` is the URL to
  put in the data (the end of the unbroken chain of permanent redirects);
- ``blocked``: 401/403/418/429 from a host in ``catalog/data/bot-blocking-hosts.yaml``;
- ``broken``: 404, 410, DNS failure, connection refused;
- ``unknown``: anything else (redirect loop, timeouts after retries, 5xx after retries, 403 from an
  unlisted host, the overall deadline, a redirect from a public host to a loopback, private or
  reserved address, which is not followed and never suggested).

Only ``broken`` makes the command fail. HEAD is tried first, then GET where the HEAD answer is a refusal
(4xx other than 429, or 501); see :mod:`catalog.http` for retries and per-host limits.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import ipaddress
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import yaml

from catalog.atomic import write_file
from catalog.http import Deadline, JsonCache, Policy, Throttle, hostname, request_with_retries

STATUSES = ("ok", "redirected", "blocked", "broken", "unknown")
BLOCKING_FILE = Path(__file__).parent / "data" / "bot-blocking-hosts.yaml"
DEFAULT_CACHE = Path(".cache") / "catalog-links.json"
BLOCK_STATUSES = frozenset({401, 403, 418, 429})
PERMANENT = frozenset({301, 308})
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass
class LinkResult:
    """One URL's verdict; what the JSON report holds per URL."""

    url: str
    status: str  # one of STATUSES
    http_status: int | None = None
    final_url: str | None = None
    suggested_url: str | None = None  # for `redirected`: the permanent target to write in the data
    message: str = ""
    attempts: int = 0
    cached: bool = False
    papers: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=4)
def load_blocking_hosts(path: str | Path = BLOCKING_FILE) -> dict[str, frozenset[int]]:
    """``host -> statuses`` from the documented data file; each entry must give a reason and evidence."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    table: dict[str, frozenset[int]] = {}
    for index, entry in enumerate(data.get("hosts", [])):
        where = f"{path}: hosts[{index}]"
        if not isinstance(entry, dict) or not entry.get("host"):
            raise ValueError(f"{where}: expected a mapping with `host`")
        if not entry.get("reason") or not entry.get("evidence"):
            raise ValueError(f"{where} ({entry['host']}): `reason` and `evidence` are required")
        statuses = frozenset(int(s) for s in entry.get("statuses", BLOCK_STATUSES))
        if not statuses <= BLOCK_STATUSES:
            raise ValueError(f"{where}: statuses must be among {sorted(BLOCK_STATUSES)}, got {sorted(statuses)}")
        table[entry["host"].lower()] = statuses
    return table


def is_blocking(host: str, status: int, table: dict[str, frozenset[int]]) -> bool:
    """True when ``host`` (or a parent domain of it) is listed for ``status``."""
    parts = host.lower().split(".")
    for i in range(len(parts)):
        statuses = table.get(".".join(parts[i:]))
        if statuses is not None and status in statuses:
            return True
    return False


def is_internal_host(host: str) -> bool:
    """Whether a host names this machine or a private network: ``localhost`` or a non-global IP literal."""
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local or address.is_reserved \
        or address.is_unspecified or address.is_multicast


def _head_refused(status: int) -> bool:
    """A HEAD answer that may only mean "not for HEAD": ask again with GET (doi.org, publishers)."""
    return status == 501 or (400 <= status < 500 and status not in (408, 429))


def _cached_result(url: str, record: dict | None) -> LinkResult | None:
    """The result a cache record holds, or None when there is none or it is malformed."""
    if record is None or record.get("status") not in ("ok", "redirected"):
        return None
    code, final, suggested = record.get("http_status"), record.get("final_url"), record.get("suggested_url")
    if not (isinstance(code, int) and all(isinstance(text, (str, type(None))) for text in (final, suggested))):
        return None
    return LinkResult(url, record["status"], code, final, suggested, "cached", cached=True)


class LinkChecker:
    """Checks URLs concurrently: a bounded thread pool, per-host slots and backoff, an overall deadline."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        workers: int = 16,
        deadline: float | None = 600.0,
        cache: JsonCache | None = None,
        blocking_hosts: dict[str, frozenset[int]] | None = None,
        progress=None,
    ):
        self.policy = policy or Policy()
        self.workers = workers
        self.deadline_seconds = deadline
        self.cache = cache
        self.blocking = load_blocking_hosts() if blocking_hosts is None else blocking_hosts
        self.progress = progress  # callable(done, total) or None

    # -- one URL ---------------------------------------------------------------------------------
    def check_one(self, url: str, throttle: Throttle, deadline: Deadline) -> LinkResult:
        if self.cache is not None:
            record = self.cache.get(url)
            cached = _cached_result(url, record)
            if cached is not None:
                return cached
            if record is not None and record.get("status") in ("ok", "redirected"):
                self.cache.warn(f"{url}: malformed cache record; checking it again")
        result = self._check_uncached(url, throttle, deadline)
        if self.cache is not None and result.status in ("ok", "redirected"):
            fields = ("status", "http_status", "final_url", "suggested_url")
            self.cache.put(url, {k: getattr(result, k) for k in fields})
        return result

    def _check_uncached(self, url: str, throttle: Throttle, deadline: Deadline) -> LinkResult:
        current = url
        suggested = url
        permanent_chain = True
        seen = {url}
        attempts = 0
        hops: list[str] = []
        for _ in range(self.policy.max_redirects + 1):
            out = request_with_retries("HEAD", current, self.policy, throttle, deadline, fallback_get=_head_refused)
            attempts += out.attempts
            if out.response is None:
                status = "broken" if out.error in ("dns", "refused") else "unknown"
                what = {"dns": "DNS lookup failed", "refused": "connection refused", "reset": "connection reset",
                        "timeout": "timed out", "deadline": "not finished by the overall deadline"}.get(
                    out.error, "connection failed")
                if out.attempts > 1:
                    what += f" after {out.attempts} attempts"
                return LinkResult(url, status, None, current, None, f"{what}: {out.detail}".rstrip(": "), attempts)
            code = out.response.status_code
            location = out.response.headers.get("Location")
            if code in REDIRECTS and location:
                target = urljoin(current, location)
                hops.append(f"{code} {target}")
                if is_internal_host(hostname(target)) and not is_internal_host(hostname(url)):
                    return LinkResult(url, "unknown", code, target, None,
                                      "redirects to a loopback, private or reserved address; not followed: "
                                      + " -> ".join(hops), attempts)
                if code in PERMANENT and permanent_chain:
                    suggested = target
                else:
                    permanent_chain = False
                if target in seen:
                    return LinkResult(url, "unknown", code, target, None,
                                      "redirect loop: " + " -> ".join(hops), attempts)
                seen.add(target)
                current = target
                continue
            return self._classify(url, code, current, suggested, attempts, out.detail, hops)
        return LinkResult(url, "unknown", None, current, None,
                          f"more than {self.policy.max_redirects} redirects", attempts)

    def _classify(self, url, code, final, suggested, attempts, detail, hops) -> LinkResult:
        via = f" (via {' -> '.join(hops)})" if hops else ""
        if 200 <= code < 300:
            if suggested != url:
                return LinkResult(url, "redirected", code, final, suggested,
                                  f"permanently moved; use {suggested}", attempts)
            return LinkResult(url, "ok", code, final, None, "", attempts)
        if code in (404, 410):
            return LinkResult(url, "broken", code, final, None, f"HTTP {code}{via}", attempts)
        if code in BLOCK_STATUSES and (is_blocking(hostname(final), code, self.blocking)
                                       or is_blocking(hostname(url), code, self.blocking)):
            return LinkResult(url, "blocked", code, final, None,
                              f"HTTP {code} from {hostname(final)}, a host that blocks link checkers; check by hand",
                              attempts)
        message = f"HTTP {code}{via}"
        if code in BLOCK_STATUSES:
            message += f"; {hostname(final)} is not in {BLOCKING_FILE.name}"
        if attempts > 1:
            message += f"; after {attempts} attempts"
        if detail:
            message += f"; {detail}"
        return LinkResult(url, "unknown", code, final, None, message, attempts)

    # -- many URLs -------------------------------------------------------------------------------
    def check(self, urls) -> list[LinkResult]:
        """Check ``urls`` (duplicates checked once); results in input order, every URL present."""
        urls = list(dict.fromkeys(urls))
        deadline = Deadline(self.deadline_seconds)
        throttle = Throttle(self.policy)
        results: dict[str, LinkResult] = {}
        done = 0
        lock = threading.Lock()
        pool = cf.ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="links")
        try:
            futures = {pool.submit(self.check_one, url, throttle, deadline): url for url in urls}
            pending = set(futures)
            while pending:
                remaining = deadline.remaining()
                # A small grace period lets requests whose timeouts were capped at the deadline report.
                finished, pending = cf.wait(pending, timeout=None if remaining == float("inf") else remaining + 0.5,
                                            return_when=cf.FIRST_COMPLETED)
                if not finished:
                    break
                for future in finished:
                    url = futures[future]
                    try:
                        results[url] = future.result()
                    except Exception as exc:  # a bug must not hide the other results
                        results[url] = LinkResult(url, "unknown", message=f"internal error: {exc!r}")
                    with lock:
                        done += 1
                    if self.progress is not None:
                        self.progress(done, len(urls))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for url in urls:
            if url not in results:
                results[url] = LinkResult(url, "unknown", message="not finished by the overall deadline")
        if self.cache is not None:
            self.cache.save()
        return [results[url] for url in urls]


# --- collecting URLs from the catalog ------------------------------------------------------------


def paper_urls(paper) -> list[str]:
    """Every URL a paper cites: its links, then its code."""
    return [link.url for link in paper.links] + [code.url for code in paper.code]


def collect(papers) -> dict[str, list[str]]:
    """``url -> sorted paper files that cite it``, URLs in first-seen order."""
    cited: dict[str, set[str]] = {}
    for paper in papers:
        for url in paper_urls(paper):
            cited.setdefault(url, set()).add(paper.path or f"papers/{paper.id}.yaml")
    return {url: sorted(files) for url, files in cited.items()}


def select_papers(catalog, files: list[str], root: Path) -> tuple[list, list[str]]:
    """The papers whose files are in ``files`` (paths relative to the root or the current directory)."""
    wanted: dict[Path, str] = {}
    for name in files:
        p = Path(name)
        for candidate in ([p] if p.is_absolute() else [root / p, Path.cwd() / p]):
            wanted.setdefault(candidate.resolve(), name)
    chosen, found = [], set()
    for paper in catalog.papers:
        path = (root / (paper.path or f"papers/{paper.id}.yaml")).resolve()
        if path in wanted:
            chosen.append(paper)
            found.add(wanted[path])
    missing = [name for name in files if name not in found]
    return chosen, missing


# --- output -------------------------------------------------------------------------------------


def summary_table(results: list[LinkResult]) -> str:
    counts = {s: 0 for s in STATUSES}
    for r in results:
        counts[r.status] += 1
    lines = ["status      count", "----------  -----"]
    lines += [f"{s:<10}  {counts[s]:>5}" for s in STATUSES]
    lines.append(f"{'total':<10}  {len(results):>5}")
    problems = [r for r in results if r.status != "ok"]
    if problems:
        lines.append("")
        order = {s: i for i, s in enumerate(("broken", "unknown", "blocked", "redirected"))}
        for r in sorted(problems, key=lambda r: (order.get(r.status, 9), r.url)):
            code = "-" if r.http_status is None else str(r.http_status)
            cited = f" [{', '.join(r.papers)}]" if r.papers else ""
            lines.append(f"{r.status:<10}  {code:>3}  {r.url}{cited}")
            if r.message:
                lines.append(f"{'':<15}{r.message}")
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, results: list[LinkResult]) -> None:
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    data = {"summary": counts, "results": [asdict(r) for r in sorted(results, key=lambda r: r.url)]}
    write_file(Path(path), json.dumps(data, indent=2, ensure_ascii=False) + "\n")

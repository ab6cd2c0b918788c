"""The built site, checked as a reader sees it: headless Chromium opens the landing page and every chapter
page of `_toc.yml` and fails on a Python traceback or error output, on math left unrendered, on a missing or
broken image, and on a local link that does not resolve.

The site is built by the session fixture with the same command as `make book` (failing on any warning)
unless an up-to-date build exists. Environment:

- ``GENBOOK_TOC`` / ``GENBOOK_BUILD``: build (and check) with another table of contents, into another folder
  (``jupyter-book build . --toc TOC --path-output BUILD``), to test the machinery on a subset of chapters;
- ``GENBOOK_SCREENSHOTS``: a folder where a screenshot of every checked page is saved;
- ``CHROMIUM``: the browser (default ``/usr/bin/chromium``, Debian's package). Without it the test skips,
  except in CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOC = Path(os.environ.get("GENBOOK_TOC", ROOT / "_toc.yml"))
BUILD = Path(os.environ.get("GENBOOK_BUILD", ROOT))
HTML = BUILD / "_build" / "html"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MATHJAX = ROOT / ".cache" / "mathjax" / "mathjax" / "tex-chtml.js"

# what a Python error looks like in the text of a page
TRACEBACK = "Traceback (most recent call last)"


def toc_files(toc: Path = TOC) -> list[str]:
    """The root and every file of the table of contents, in order (paths without extension)."""
    spec = yaml.safe_load(toc.read_text())
    files = [spec["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in spec.get("parts", []):
        walk(part.get("chapters"))
    walk(spec.get("chapters"))
    return files


def _sources(files: list[str]) -> list[Path]:
    out = [ROOT / "_config.yml", TOC, ROOT / "references.bib"]
    for f in files:
        out += [p for p in (ROOT / f).parent.glob(Path(f).name + ".*")]
    out += list((ROOT / "genlib").rglob("*.py"))
    return out


def build_is_current(files: list[str]) -> bool:
    """A build exists, has every page, and is newer than every source it was made from."""
    pages = [HTML / f"{f}.html" for f in files]
    if not all(p.exists() for p in pages):
        return False
    built = min(p.stat().st_mtime for p in pages)
    return all(s.stat().st_mtime <= built for s in _sources(files) if s.exists())


def build_site() -> subprocess.CompletedProcess:
    if not MATHJAX.exists():
        subprocess.run(["make", "mathjax"], cwd=ROOT, check=True)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", ".", "-W", "-n", "--keep-going"]
    if TOC != ROOT / "_toc.yml" or BUILD != ROOT:
        cmd += ["--toc", str(TOC), "--path-output", str(BUILD)]
    # the kernels must draw inline: the test session's MPLBACKEND=Agg (tests/conftest.py) would leave every
    # plt.show() without output, a site without figures
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def site() -> Path:
    """The built site's html folder: built here (zero warnings required) unless a current build exists."""
    files = toc_files()
    if not build_is_current(files):
        start = time.perf_counter()
        result = build_site()
        log = result.stdout + result.stderr
        # Sphinx's own warnings ("path: WARNING: ..."), not the kernels' log lines ("[IPKernelApp] WARNING | ...")
        warnings = [line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL):", line)]
        print(f"\nsite built in {time.perf_counter() - start:.0f} s with {len(warnings)} warning(s)")
        assert result.returncode == 0 and not warnings, "the book build failed or warned:\n" + "\n".join(
            warnings or log.splitlines()[-40:])
    return HTML


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's package) through playwright, with no network."""
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"chromium not found at {CHROMIUM}: CI must install it (apt-get install -y chromium)")
        pytest.skip(f"chromium not found at {CHROMIUM} (install it with `apt-get install -y chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _local_target(html_file: Path, href: str) -> Path | None:
    """The file a relative link points to, or None for external links, anchors and special schemes."""
    url = urlparse(href)
    if url.scheme or url.netloc or href.startswith(("#", "mailto:", "javascript:")):
        return None
    path = unquote(urldefrag(url.path)[0])
    if not path:
        return None
    target = (html_file.parent / path).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target


def check_page(browser, html: Path, page: Path) -> list[str]:
    """Open one page in Chromium and return the problems found."""
    problems: list[str] = []
    redirect = re.search(r'http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', page.read_text()[:1000], re.I)
    if redirect:                                   # the root index.html only redirects to the landing page
        target = _local_target(page, redirect.group(1))
        if target is None or not target.exists():
            return [f"redirects to a missing page: {redirect.group(1)}"]
        page = target
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    tab = context.new_page()
    failed: list[str] = []
    tab.on("requestfailed", lambda req: failed.append(req.url) if req.url.startswith("file://") else None)
    tab.goto(page.as_uri(), wait_until="load")
    has_math = tab.locator(".math").count() > 0
    if has_math:
        try:
            tab.wait_for_function(
                "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
                " && document.querySelectorAll('mjx-container').length > 0", timeout=30_000)
            tab.evaluate("() => MathJax.startup.promise")
        except Exception:
            problems.append("MathJax did not typeset the page")
    main = tab.locator("main")
    text = main.inner_text() if main.count() else tab.inner_text("body")
    # error outputs: a traceback anywhere, or any output that myst-nb renders as an error or stderr stream
    # (a page may print an exception's message on purpose, e.g. to show the error genlib raises; that is fine)
    error_outputs = tab.locator(".output.traceback, .output.error, .output.stderr").count()
    if TRACEBACK in text or error_outputs:
        problems.append("page shows a Python traceback or error")
    # raw TeX left in the visible text ($$ delimiters, or a \frac outside any typeset math)
    visible = tab.evaluate(r"""() => {
        const w = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
        const out = [];
        while (w.nextNode()) {
            const n = w.currentNode, p = n.parentElement;
            if (p.closest('mjx-container, pre, code, script, style, .highlight, mjx-assistive-mml')) continue;
            out.push(n.textContent);
        }
        return out.join(' ');
    }""")
    if tab.locator("div.output.error, div.output.traceback, .output.stderr").count():
        problems.append("page has error or stderr output cells")
    if has_math:
        n_math = tab.locator("mjx-container").count()
        raw = tab.evaluate(r"""() => {
            const out = [];
            for (const el of document.querySelectorAll('main .math')) {
                if (!el.querySelector('mjx-container')) out.push(el.textContent.slice(0, 60));
            }
            return out;
        }""")
        if raw:
            problems.append(f"{len(raw)} math element(s) not typeset, e.g. {raw[0]!r}")
        if n_math == 0:
            problems.append("page has math but no typeset equation")
    if "$$" in visible or re.search(r"\\(frac|mathbb|mathcal|begin\{)|\$[^$\s][^$]*\\[a-zA-Z]+[^$]*\$", visible):
        problems.append("raw TeX left in the page")
    if re.search(r"\|\s*(---|—)+\s*\|", visible):
        problems.append("a Markdown table left unrendered")
    broken = tab.evaluate("""() => Array.from(document.images)
        .filter(img => !img.complete || img.naturalWidth === 0).map(img => img.getAttribute('src') || '')""")
    problems += [f"broken image: {src[:80]}" for src in broken]
    problems += [f"failed to load: {u}" for u in failed]
    for href in tab.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))"):
        target = _local_target(page, href)
        if target is not None and not target.exists():
            problems.append(f"link to a missing file: {href}")
    shots = os.environ.get("GENBOOK_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        name = str(page.relative_to(html).with_suffix("")).replace("/", "_")
        tab.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=False)
    context.close()
    return problems


def test_toc_pages_exist_in_build(site):
    missing = [f for f in toc_files() if not (site / f"{f}.html").exists()]
    assert not missing, f"pages of _toc.yml missing from the build: {missing}"


def shown_figures(notebook: Path) -> int:
    """How many figures a notebook shows at least: its code cells with a top-level ``plt.show()`` (cells whose
    output is removed from the page excluded)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" and "remove-output" not in c.metadata.get("tags", [])
               and re.search(r"^plt\.show\(\)", c.source, re.M))


def test_notebook_pages_show_their_figures(site):
    """Every figure a chapter's notebook draws is an image on its page (none lost to a non-inline backend)."""
    missing = {}
    for f in toc_files():
        nb = ROOT / f"{f}.ipynb"
        if not nb.exists():
            continue
        expected = shown_figures(nb)
        images = len(re.findall(r'<img[^>]+src="[^"]*_images/', (site / f"{f}.html").read_text()))
        if images < expected:
            missing[f] = f"{images} image(s) for {expected} figure cell(s)"
    assert not missing, f"pages without their figures: {missing}"


def test_every_page_in_browser(site, browser, capsys):
    pages = [site / "index.html"] + [site / f"{f}.html" for f in toc_files()]
    report = {}
    for page in pages:
        problems = check_page(browser, site, page)
        if problems:
            report[str(page.relative_to(site))] = problems
    with capsys.disabled():
        print(f"\nbrowser check: {len(pages)} pages checked, {len(report)} with problems")
    assert not report, "\n".join(f"{p}: {'; '.join(v)}" for p, v in report.items())


def test_math_is_served_locally(site):
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax must ship with the site"
    page = (site / "book" / "notation.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in page and "cdn.jsdelivr" not in page


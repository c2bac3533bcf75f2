"""The documentation site as a newcomer reads it: every code block fits a 1280 px wide window.

The site is built with mkdocs (the ``docs`` extra), served on a loopback port and opened in
headless Chromium (Debian's ``chromium`` package). One page holds every page of the site in a
1280 px wide frame; once they are laid out it measures each ``<pre>`` and ``<pre><code>``:
a block whose ``scrollWidth`` exceeds its ``clientWidth`` scrolls sideways. Sample output
(``console`` and ``text`` blocks) may wrap as a terminal would; code may not: it has to fit.
The browser resolves no host but 127.0.0.1, so the theme's web fonts are not fetched and the
browser's own monospace font stands in (as wide as the theme's Roboto Mono, to 0.5%).

Without Chromium these tests are skipped, and fail when ``CI`` is set (CI installs it).
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1280
MAY_WRAP = ("console", "text")  # sample output; everything else is code

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Only the loopback server: the theme's fonts and anything else stay unresolved.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)

HARNESS = """<!doctype html>
<meta charset="utf-8">
<title>code blocks at {width} px</title>
<style>body {{ margin: 0 }} iframe {{ width: {width}px; height: 900px; border: 0 }}</style>
<pre id="report">pending</pre>
{frames}
<script>
const mayWrap = {may_wrap};
function language(block) {{
  const box = block.closest("[class*='language-']");
  const match = box && box.className.match(/language-([\\w-]+)/);
  return match ? match[1] : "";
}}
function measure() {{
  const pages = [];
  for (const frame of document.querySelectorAll("iframe")) {{
    const doc = frame.contentDocument;
    const page = {{page: frame.dataset.page, width: frame.contentWindow.innerWidth,
                   blocks: 0, overflowing: [], wrapped: []}};
    for (const pre of doc.querySelectorAll(".md-content pre")) {{
      page.blocks += 1;
      const lang = language(pre);
      const lines = pre.textContent.split("\\n");
      const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
      const heading = [...doc.querySelectorAll(".md-content h1, .md-content h2, .md-content h3")]
        .filter((h) => h.compareDocumentPosition(pre) & Node.DOCUMENT_POSITION_FOLLOWING)
        .pop();
      const title = heading ? heading.textContent.replace(/\\u00b6/g, "") : "";
      const where = {{lang, heading: title.replace(/\\s+/g, " ").trim(), longest}};
      for (const box of [pre, ...pre.querySelectorAll(":scope > code")]) {{
        if (box.scrollWidth > box.clientWidth + 1) {{
          page.overflowing.push({{...where, scroll: box.scrollWidth, client: box.clientWidth}});
          break;
        }}
      }}
      const code = pre.querySelector(":scope > code") || pre;
      if (!mayWrap.includes(lang) && getComputedStyle(code).whiteSpace !== "pre") {{
        page.wrapped.push({{...where, whiteSpace: getComputedStyle(code).whiteSpace}});
      }}
    }}
    pages.push(page);
  }}
  document.getElementById("report").textContent = JSON.stringify(pages);
}}
window.addEventListener("load", () => setTimeout(measure, 500));
</script>
"""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    missing = "needs Chromium (apt-get install chromium)"
    if os.environ.get("CI"):  # CI installs it: a skip there would hide a failure
        pytest.fail(missing)
    pytest.skip(missing)


def chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def site_pages(site: Path) -> list[str]:
    return sorted(
        path.relative_to(site).as_posix()
        for path in site.rglob("*.html")
        if path.name != "404.html" and not path.name.startswith("_")
    )


def measure(binary: str, site: Path, url: str) -> list[dict[str, Any]]:
    frames = "\n".join(
        f'<iframe src="/{page}" data-page="{page}"></iframe>' for page in site_pages(site)
    )
    harness = HARNESS.format(width=WIDTH, frames=frames, may_wrap=json.dumps(MAY_WRAP))
    (site / "_code_blocks.html").write_text(harness)
    done = chromium(
        binary,
        f"--window-size={WIDTH + 20},1000",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"{url}/_code_blocks.html",
    )
    found = re.search(r'<pre id="report">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found is not None, done.stderr[-2000:]
    assert found.group(1) != "pending", "the measuring script did not run"
    pages: list[dict[str, Any]] = json.loads(html.unescape(found.group(1)))
    return pages


def screenshots(binary: str, url: str, pages: list[str], into: Path) -> list[Path]:
    shots = []
    for page in pages:
        shot = into / (page.replace("/", "_").removesuffix(".html") + ".png")
        chromium(binary, f"--window-size={WIDTH},2400", f"--screenshot={shot}", f"{url}/{page}")
        shots.append(shot)
    return shots


def test_every_code_block_fits_a_1280_px_window(site: Path, served: str, tmp_path: Path) -> None:
    binary = find_chromium()
    pages = measure(binary, site, served)
    assert [p["page"] for p in pages] == site_pages(site)
    assert {p["width"] for p in pages} == {WIDTH}
    measured = {p["page"]: p["blocks"] for p in pages}
    # The pages the check was written for hold code blocks; a check that found none is broken.
    for page in ("index.html", "quickstart/index.html", "batch/index.html"):
        assert measured[page] > 0, f"no code block found on {page}"
    problems = [
        f"{p['page']} [{b['heading']}] {b['lang'] or 'no language'} block, "
        f"{b['scroll']} px wide in {b['client']} px: {b['longest'].strip()[:100]!r}"
        for p in pages
        for b in p["overflowing"]
    ]
    problems += [
        f"{p['page']} [{b['heading']}] {b['lang'] or 'no language'} block wraps "
        f"(white-space: {b['whiteSpace']}); only {', '.join(MAY_WRAP)} output may"
        for p in pages
        for b in p["wrapped"]
    ]
    if problems:
        bad = sorted({p["page"] for p in pages if p["overflowing"] or p["wrapped"]})
        shots = screenshots(binary, served, bad, tmp_path)
        pytest.fail(
            f"{len(problems)} code blocks scroll sideways (or wrap) at {WIDTH} px:\n"
            + "\n".join(problems)
            + "\nscreenshots: "
            + ", ".join(map(str, shots))
        )


def test_the_readme_says_how_to_build_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[docs]'" in readme
    assert "mkdocs serve" in readme
    assert "mkdocs build --strict" in readme

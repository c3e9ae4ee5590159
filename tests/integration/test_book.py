"""`make book` (scripts/book.py): the course as a static site. Built from the committed notebooks, then
every page opened in headless Chromium (Debian's `chromium`; .ci/run installs it): each renders, with
its title, every figure its notebook stores decoded by the browser, no resource fetched from the
network, and every link of the index and of the pages' navigation resolving to a page of the book."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.integration

# Loads every page of the book in an iframe (file:// pages may read each other's DOM only with
# --allow-file-access-from-files) and writes what the browser made of each into #out as JSON.
HARNESS = """<!DOCTYPE html><html><body><pre id="out">pending</pre><script>
const pages = PAGES, results = {};
let pending = pages.length;
for (const name of pages) {
  const frame = document.createElement("iframe");
  frame.style.width = "1200px";
  frame.style.height = "900px";
  frame.onload = () => {
    const d = frame.contentDocument, images = [...d.images];
    results[name] = {
      title: d.title,
      h1: (d.querySelector("h1") || {}).textContent || "",
      images: images.length,
      decoded: images.filter((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length,
      height: d.body.scrollHeight,
    };
    if (--pending === 0) document.getElementById("out").textContent = JSON.stringify(results);
  };
  frame.src = name;
  document.body.appendChild(frame);
}
</script></body></html>
"""


def stored_images(notebook: Path) -> int:
    """The PNG figures a notebook stores in its outputs."""
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("book") / "book"
    done = subprocess.run(
        [sys.executable, "scripts/book.py", "notebooks", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {len(list(out.glob('*.html')))} pages to {out}: open {out / 'index.html'}\n"
    return out


def notebooks() -> dict[str, Path]:
    """Page name -> notebook, for every notebook of the course."""
    paths = [*NOTEBOOKS.glob("[0-9]*.ipynb"), *(NOTEBOOKS / "labs").glob("*.ipynb")]
    return {p.stem + ".html": p for p in paths}


def local_links(page: Path) -> list[str]:
    """The page's links to files (not to an anchor of itself, not to the web)."""
    hrefs = re.findall(r'href="([^"]*)"', page.read_text())
    return [h.split("#")[0] for h in hrefs if h and not h.startswith("#") and "://" not in h]


def test_the_index_lists_the_course_in_order_and_every_link_resolves(book: Path) -> None:
    index = book / "index.html"
    toc = re.search(r"<nav>(.*?)</nav>", index.read_text(), re.S)
    assert toc is not None
    listed = re.findall(r'<li><a href="([^"]+)">', toc.group(1))
    assert sorted(listed) == sorted(notebooks()) and len(set(listed)) == len(listed)
    numbered = [name for name in listed if name[0].isdigit()]
    labs = [name for name in listed if name.startswith("lab")]
    assert listed == numbered + labs and numbered[0].startswith("00-")  # the notebooks, then the labs
    assert [int(n[:2]) for n in numbered] == sorted(int(n[:2]) for n in numbered)
    assert [int(n[3]) for n in labs] == sorted(int(n[3]) for n in labs)
    for page in [index, *(book / name for name in listed)]:
        for link in local_links(page):
            assert (book / link).is_file(), f"{page.name} links to {link}, which the book does not hold"


def test_every_figure_is_embedded_and_nothing_comes_from_the_network(book: Path) -> None:
    for name, notebook in notebooks().items():
        text = (book / name).read_text()
        sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
        assert len(sources) == stored_images(notebook), name
        assert all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=\s]{100,}", s) for s in sources), name
        assert not re.search(r'<(script|img|iframe)[^>]*\ssrc="(https?:)?//', text), name
        assert not re.search(r'<link[^>]*\shref="(https?:)?//', text), name
    widget = (book / "05-crash-injection.html").read_text()
    assert "it needs a running kernel" in widget and "widget-view+json" not in widget


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)")
def test_every_page_renders_in_headless_chromium(book: Path) -> None:
    pages = sorted(p.name for p in book.glob("*.html"))
    (book / "_check.html").write_text(HARNESS.replace("PAGES", json.dumps(pages)))
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--dump-dom",
            (book / "_check.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, re.S)
    assert out is not None and out.group(1) != "pending", done.stdout[-2000:]
    seen = json.loads(out.group(1))
    assert sorted(seen) == pages
    books = notebooks()
    for name, page in seen.items():
        assert page["height"] > 1000, (name, page)  # laid out: a course page is long
        assert page["images"] == page["decoded"], (name, page)  # every figure decoded and drawn
        if name == "index.html":
            assert page["h1"] == page["title"] == "beaver_sim: the course"
            continue
        assert page["h1"].rstrip("¶") == page["title"], (name, page)
        assert page["images"] == stored_images(books[name]), (name, page)
    assert sum(p["decoded"] for p in seen.values()) == sum(map(stored_images, books.values())) > 0

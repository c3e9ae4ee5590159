"""`make book`: the course as a static site, read offline in any browser, from the committed notebooks.

Each notebook becomes one HTML page by nbconvert's `lab` template, with the outputs it stores (no cell
is run: they are the outputs strict nbval holds to the code) and its figures embedded as data URIs.
Nothing is fetched from the network: the template's scripts from CDNs (require.js, MathJax, mermaid,
the widget manager) are left out, and a live widget's output (05's crash explorer) becomes a note
that it needs a kernel. `index.html` holds the table of contents in course order (00..11, then the
labs) and the course's README; every page links to the previous one, the next one and the contents.

Usage: python scripts/book.py NOTEBOOKS_DIR OUT_DIR"""

from __future__ import annotations

import html
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbconvert import HTMLExporter
from nbconvert.filters import markdown2html

TEMPLATE = (
    """{%- extends "index.html.j2" -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style>"""
    + (
        "nav.book{display:flex;justify-content:space-between;max-width:1100px;margin:0 auto;padding:8px 16px;"
        "font:14px sans-serif}nav.book a{text-decoration:none}"
    )
    + """</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}{{ resources.book_nav }}{%- endblock body_header -%}
{%- block body_footer -%}{{ resources.book_nav }}{{ super() }}{%- endblock body_footer -%}
"""
)
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    "<p><em>An interactive widget: it needs a running kernel. Open the notebook in JupyterLab "
    "(<code>make lab</code>) to use it.</em></p>"
)
INDEX_CSS = (
    "body{font:16px/1.5 sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    "code{background:#f3f3f3;padding:0 2px}pre{background:#f3f3f3;padding:8px;overflow:auto}"
)


@dataclass(frozen=True)
class Page:
    """One notebook of the course: where it is, the page it becomes, and its first heading."""

    source: Path
    name: str  # the page's file name in the book (flat: labs/lab1-wal.ipynb -> lab1-wal.html)
    title: str


def course(notebooks: Path) -> list[Page]:
    """The course's notebooks in course order: 00..11 first, then the labs, each by file name."""
    paths = sorted(notebooks.glob("[0-9]*.ipynb")) + sorted((notebooks / "labs").glob("*.ipynb"))
    return [Page(p, p.stem + ".html", title(nbformat.read(p, as_version=4))) for p in paths]


def title(nb: nbformat.NotebookNode) -> str:
    """The text of the notebook's first markdown heading."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    raise ValueError("a course notebook starts with a markdown heading")


def page_link(target: str) -> str:
    """A link of the course's markdown to a notebook (`02-wal.ipynb`, `labs/lab1-wal.ipynb`), as a
    link to its page in the flat book; any other link unchanged."""
    path, sep, anchor = target.partition("#")
    if path.endswith(".ipynb") and "://" not in path:
        return Path(path).stem + ".html" + sep + anchor
    return target


def _relinked(text: str) -> str:
    return re.sub(r"\]\(([^)\s]+)\)", lambda m: f"]({page_link(m.group(1))})", text)


def nav(pages: list[Page], i: int) -> str:
    """Links to the previous page, the contents and the next page."""
    before = (
        f'<a href="{pages[i - 1].name}">← {html.escape(pages[i - 1].title)}</a>' if i else "<span></span>"
    )
    after = "<span></span>"
    if i + 1 < len(pages):
        after = f'<a href="{pages[i + 1].name}">{html.escape(pages[i + 1].title)} →</a>'
    return f'<nav class="book">{before}<a href="index.html">Contents</a>{after}</nav>'


def render(page: Page, exporter: HTMLExporter, book_nav: str) -> str:
    """The page's HTML: the stored outputs, widgets replaced by a note, links between notebooks
    pointing at their pages."""
    nb = nbformat.read(page.source, as_version=4)
    nb.metadata.pop("widgets", None)
    nb.metadata["title"] = page.title
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _relinked(cell.source)
        for output in cell.get("outputs", []):
            if WIDGET in output.get("data", {}):
                output["data"] = {"text/html": WIDGET_NOTE}
    body, _ = exporter.from_notebook_node(nb, resources={"book_nav": book_nav})
    return body


def index(pages: list[Page], readme: str) -> str:
    """The contents in course order, then the course's README (its links to notebooks relinked)."""

    def toc(part: list[Page]) -> str:
        items = "".join(f'<li><a href="{p.name}">{html.escape(p.title)}</a></li>' for p in part)
        return f"<ol>{items}</ol>"

    notebooks = [p for p in pages if p.source.parent.name != "labs"]
    labs = [p for p in pages if p.source.parent.name == "labs"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>beaver_sim: the course</title><style>{INDEX_CSS}</style></head><body>"
        "<h1>beaver_sim: the course</h1><nav><h2>Contents</h2>"
        f"<h3>Notebooks</h3>{toc(notebooks)}<h3>Labs</h3>{toc(labs)}</nav>"
        f"<hr>{markdown2html(_relinked(readme))}</body></html>\n"
    )


def build(notebooks: Path, out: Path) -> list[Path]:
    """Write the book of the notebooks in `notebooks` to `out` (emptied first); returns the pages,
    the index first."""
    pages = course(notebooks)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    exporter = HTMLExporter(
        template_name="lab",
        template_file="book.html.j2",
        extra_loaders=[DictLoader({"book.html.j2": TEMPLATE})],
    )
    written = [out / "index.html"]
    written[0].write_text(index(pages, (notebooks / "README.md").read_text()))
    for i, page in enumerate(pages):
        target = out / page.name
        target.write_text(render(page, exporter, nav(pages, i)))
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/book.py NOTEBOOKS_DIR OUT_DIR", file=sys.stderr)
        return 2
    written = build(Path(argv[0]), Path(argv[1]))
    print(f"wrote {len(written)} pages to {argv[1]}: open {written[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

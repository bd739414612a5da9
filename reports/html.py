"""The static HTML page: figures (PNG shown, SVG linked), captions naming the paper
figure redrawn, our numbers beside the paper's (labelled), run configurations, the
summary table, and what could not be drawn. Self-contained: inline CSS, relative
links, no scripts or network resources, so it opens from disk in any browser."""
from __future__ import annotations

import datetime as dt
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from codiag import atomic
from codiag.version import __version__

from .base import Figure, readable_callable

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{font-size:1.05em}
figure{margin:1.5em 0;padding:.8em;border:1px solid #e3e3e3;border-radius:6px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.92em;color:#333;margin-top:.4em}
.redraws{color:#555;font-style:italic}
table{border-collapse:collapse;font-size:.85em;margin:.4em 1.5em .4em 0;vertical-align:top}
th,td{border:1px solid #d0d0d0;padding:.2em .5em;text-align:left}
th{background:#f3f3f3}
.numbers{display:flex;flex-wrap:wrap;align-items:flex-start}
.numbers caption{caption-side:top;text-align:left;font-weight:600;font-size:.95em;padding:.2em 0}
table.paper caption{color:#8a4b00} table.paper{background:#fffaf2}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em;margin:.3em 0}
.note{font-size:.85em;color:#555}
details{margin:.6em 0} summary{cursor:pointer}
nav ul{columns:2;font-size:.9em}
"""


@dataclass
class Section:
    """A part of the page: a heading, optional intro HTML, figures, and not-drawn reasons."""

    anchor: str
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    config: dict[str, Any] | None = None


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table_html(df: pd.DataFrame, caption: str, cls: str) -> str:
    body = df.to_html(index=False, escape=True, na_rep="", border=0, classes=cls)
    return body.replace(">\n  <thead>", f">\n<caption>{esc(caption)}</caption>\n  <thead>", 1)


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def figure_html(fig: Figure, root: Path) -> str:
    png, svg = _rel(fig.files["png"], root), _rel(fig.files["svg"], root)
    parts = [f'<figure id="{esc(fig.key)}">',
             f'<a href="{esc(svg)}"><img src="{esc(png)}" alt="{esc(fig.title)}"></a>',
             f'<figcaption><b>{esc(fig.title)}.</b> <span class="redraws">Redraws {esc(fig.redraws)}.'
             f'</span> {esc(fig.caption)} <a href="{esc(svg)}">SVG</a> · <a href="{esc(png)}">PNG</a>'
             '</figcaption>']
    tables = []
    if fig.table is not None and len(fig.table):
        tables.append(table_html(fig.table, "ours (this report's runs)", "ours"))
    if fig.paper is not None and len(fig.paper):
        tables.append(table_html(fig.paper, fig.paper_source or "paper", "paper"))
    if tables:
        parts.append('<div class="numbers">' + "".join(tables) + "</div>")
    for note in fig.notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts.append("</figure>")
    return "\n".join(parts)


def _shown(value: Any) -> Any:
    """``value`` for the page: a list of indices (the probe sets' points, hundreds of numbers that
    run.json keeps) becomes how many there are and their range; a recorded lambda a readable name."""
    if isinstance(value, dict):
        return {k: (_indices(v) if k == "indices" and isinstance(v, list) else _shown(v)) for k, v in value.items()}
    return readable_callable(value) if isinstance(value, str) else value


def _indices(values: list[Any]) -> str:
    ints = [v for v in values if isinstance(v, int)]
    if not ints:
        return f"{len(values)} indices"
    return f"{len(values)} indices, {min(ints)}..{max(ints)} (all in run.json)"


def config_html(config: dict[str, Any]) -> str:
    shown = _shown(config)
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
                   for k, v in sorted(shown.items()))
    return f"<details><summary>run configuration</summary><table>{rows}</table></details>"


def section_html(sec: Section, root: Path) -> str:
    parts = [f'<section id="{esc(sec.anchor)}">', f"<h2>{esc(sec.title)}</h2>"]
    if sec.intro:
        parts.append(sec.intro)
    if sec.config is not None:
        parts.append(config_html(sec.config))
    parts.extend(figure_html(f, root) for f in sec.figures)
    if sec.missing:
        items = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in sec.missing)
        parts.append(f'<details><summary>not drawn ({len(sec.missing)})</summary><ul class="note">'
                     f"{items}</ul></details>")
    parts.append("</section>")
    return "\n".join(parts)


def write_page(out_dir: Path, sections: list[Section], warnings: list[str],
               title: str = "codiag report") -> Path:
    """Write ``index.html`` under ``out_dir`` (temp file, then rename) and return its path."""

    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    toc = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    warn = "".join(f'<div class="warn">{esc(w)}</div>' for w in warnings)
    body = "\n".join(section_html(s, out_dir) for s in sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="codiag {esc(__version__)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="note">Written by codiag {esc(__version__)} on {esc(now)} from recorded run directories only.
Tables headed "paper (...)" hold numbers the papers report for their own settings, shown for
comparison; every other number and every figure comes from the runs below.</p>
{warn}
<nav><ul>{toc}</ul></nav>
{body}
</body></html>
"""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    atomic.write_text(path, page)
    return path

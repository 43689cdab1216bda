"""The accuracy-latency front to explore by hovering: an SVG with hover text per point, and its HTML page.

Why this form: matplotlib already draws the figure, and its SVG backend wraps each point of a
scatter drawn with ``urls`` in a link; each such link loses its target and gains an SVG
``<title>``, which every browser shows as a tooltip. The page inlines that SVG next to a pandas
table of the front, so it opens offline, runs no script and needs no new dependency; plotly or
bokeh would add a package and a megabyte-sized inline script for what a native tooltip does.
The links are rewritten as text (matplotlib writes each as one start tag): parsing and
re-serializing the XML took seconds for 10,000 trials.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Mapping

import pandas as pd

from ..core.fileio import write_text

LINK = re.compile(r'<a xlink:href="([^"]*)"[^>]*>')
PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)  # XML declaration and DOCTYPE: not for inline SVG
METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)  # matplotlib's RDF credits
FRONT_COLUMNS = ["arch", "accuracy", "latency_ms", "params", "flops"]
STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:70em}svg{max-width:100%;height:auto}"
         "a.point:hover{opacity:.55}table{border-collapse:collapse;font-size:.9em}"
         "td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}td:first-child{text-align:left}")


def hover_svg(svg: str, tips: Mapping[str, str]) -> str:
    """``svg`` (matplotlib's) with every link whose target is a key of ``tips`` titled by its value, target removed."""
    def titled(link: re.Match) -> str:
        tip = tips.get(link[1])
        return link[0] if tip is None else f'<a class="point"><title>{html.escape(tip)}</title>'
    return LINK.sub(titled, svg)


def write_front_page(path: Path, svg_path: Path, title: str, caption: str, front: pd.DataFrame) -> Path:
    """One self-contained HTML file: the hover SVG inline, its caption and the front as a table."""
    svg = METADATA.sub("", PROLOGUE.sub("", svg_path.read_text(), count=1), count=1)
    present = [c for c in FRONT_COLUMNS if c in front]
    table = (front.sort_values("latency_ms")[present].to_html(index=False, float_format="{:.4g}".format, border=0)
             if not front.empty else "<p><em>no front yet</em></p>")
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>Accuracy against latency: {html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>",
        "<body>", "<h1>Accuracy against latency</h1>", f"<p>{html.escape(title)}</p>",
        "<p>Hover over a point for its arch, accuracy, latency and params.</p>", svg,
        f"<p>{html.escape(caption.replace('`', ''))}</p>", "<h2>Pareto front</h2>", table, "</body>", "</html>", ""])
    return write_text(path, page)

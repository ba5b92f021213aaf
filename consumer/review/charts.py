"""Server-side SVG charts for the dashboard (pure: data in, SVG text out; every label escaped)."""
from __future__ import annotations

from html import escape


def bar_chart(rows: list[tuple[str, float]], *, title: str, width: int = 400, fmt: str = "{:g}",
              max_value: float | None = None) -> str:
    """Horizontal bars, one row per (label, value); ``max_value`` fixes the scale (e.g. 1 for shares)."""
    row_h, label_w, pad = 22, 120, 6
    height = max(1, len(rows)) * row_h + 2 * pad
    top = max_value if max_value is not None else max((v for _, v in rows), default=0) or 1
    bar_w = width - label_w - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
             f'width="100%" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    if not rows:
        parts.append(f'<text x="{pad}" y="{pad + 14}" class="empty">nothing yet</text>')
    for i, (label, value) in enumerate(rows):
        y = pad + i * row_h
        w = 0 if top <= 0 else max(0.0, min(1.0, value / top)) * bar_w
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(str(label))}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" class="bar"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 15}">{escape(fmt.format(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def column_chart(rows: list[tuple[str, float]], *, title: str, width: int = 400, height: int = 160) -> str:
    """Vertical columns over time (e.g. decisions per hour); every fourth label is written."""
    pad, base = 20, height - 22
    top = max((v for _, v in rows), default=0) or 1
    col = (width - 2 * pad) / max(1, len(rows))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
             f'width="100%" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" class="axis"/>',
             f'<text x="{pad}" y="12">max {top:g}</text>']
    for i, (label, value) in enumerate(rows):
        h = (value / top) * (base - 20)
        x = pad + i * col
        parts.append(f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{max(1.0, col - 2):.1f}" height="{h:.1f}" '
                     f'class="bar"><title>{escape(str(label))}: {value:g}</title></rect>')
        if i % 4 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 6}">{escape(str(label))}</text>')
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["bar_chart", "column_chart"]

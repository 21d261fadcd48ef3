"""Bar charts as SVG, drawn on the server: the page needs no JavaScript to show them.

One chart is a list of labelled horizontal bars on a common scale. A bar may carry a
darker ``part`` (the weighted share of an open value) and a ``mark`` (a 90th
percentile beyond the median). Each bar's text is written beside it, so the chart
reads without a legend and the figures are the ones the tables show.
"""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

WIDTH = 560
LABEL_WIDTH = 150
TEXT_WIDTH = 180
ROW_HEIGHT = 26
BAR_HEIGHT = 16


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str
    part: float | None = None
    mark: float | None = None


def bars(title: str, rows: list[Bar]) -> Markup:
    """An SVG bar chart of ``rows``; an empty list draws a line saying there is nothing."""
    if not rows:
        return Markup(
            '<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="30" '
            'role="img" aria-label="{t}"><title>{t}</title>'
            '<text x="0" y="20" class="empty">nothing to show yet</text></svg>'
        ).format(w=WIDTH, t=title)
    scale_to = max(max(row.value, row.mark or 0.0) for row in rows) or 1.0
    room = WIDTH - LABEL_WIDTH - TEXT_WIDTH
    height = ROW_HEIGHT * len(rows) + 4
    parts = [
        Markup(
            '<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            'viewBox="0 0 {w} {h}" role="img" aria-label="{t}"><title>{t}</title>'
        ).format(w=WIDTH, h=height, t=title)
    ]
    for number, row in enumerate(rows):
        top = number * ROW_HEIGHT + 4
        middle = top + BAR_HEIGHT / 2 + 4
        length = room * max(row.value, 0.0) / scale_to
        parts.append(
            Markup('<text x="{x}" y="{y}" class="label" text-anchor="end">{label}</text>').format(
                x=LABEL_WIDTH - 8, y=middle, label=_clip(row.label)
            )
        )
        parts.append(
            Markup('<rect x="{x}" y="{y}" width="{w:.1f}" height="{h}" class="bar"/>').format(
                x=LABEL_WIDTH, y=top, w=length, h=BAR_HEIGHT
            )
        )
        if row.part is not None:
            parts.append(
                Markup('<rect x="{x}" y="{y}" width="{w:.1f}" height="{h}" class="part"/>').format(
                    x=LABEL_WIDTH, y=top, w=room * max(row.part, 0.0) / scale_to, h=BAR_HEIGHT
                )
            )
        end = LABEL_WIDTH + length
        if row.mark is not None:
            at = LABEL_WIDTH + room * max(row.mark, 0.0) / scale_to
            parts.append(
                Markup('<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}" class="mark"/>').format(
                    x=f"{at:.1f}", top=top - 2, bottom=top + BAR_HEIGHT + 2
                )
            )
            end = max(end, at)
        parts.append(
            Markup('<text x="{x:.1f}" y="{y}" class="value">{text}</text>').format(
                x=end + 6, y=middle, text=row.text
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _clip(label: str, most: int = 28) -> str:
    # A long company or reason code must not run over the bars.
    return label if len(label) <= most else label[: most - 1] + "…"

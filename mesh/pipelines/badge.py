"""A project's status badge: an SVG of its latest build's state, meant to be embedded in a README.

The badge is served without the mesh key (mesh.api.app), so it says only what anyone who
sees the README may know: the project's name and the state of its latest build, nothing of
the commit, the job or the steps. The name is escaped for XML (names are safe identifiers,
mesh.pipelines.projects.NAME, but the SVG must not depend on that rule staying so).

Colours are shields.io's: green for succeeded, red for failed, yellow for running, grey for
cancelled and for a project without builds. Widths are estimated at 7 px a character
(Verdana 11 px averages about 6.5): a badge is a glance, not typesetting.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

COLOURS = {"succeeded": "#4c1", "failed": "#e05d44", "running": "#dfb317", "cancelled": "#9f9f9f"}
NONE = "#9f9f9f"
_QUOTE = {'"': "&quot;"}  # the text goes into attributes too


def colour(state: str | None) -> str:
    """The colour of a badge for ``state`` (None: no build yet)."""
    return COLOURS.get(state or "", NONE)


def badge(project: str, state: str | None) -> str:
    """The SVG text of ``project``'s badge for its latest build's ``state`` (None: no build)."""
    label, value = escape(project, _QUOTE), escape(state or "no builds", _QUOTE)
    left, right = 10 + 7 * len(project), 10 + 7 * len(value)
    width = left + right
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img"'
        f' aria-label="{label}: {value}">'
        f"<title>{label}: {value}</title>"
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour(state)}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2}" y="14">{label}</text>'
        f'<text x="{left + right / 2}" y="14">{value}</text>'
        "</g></svg>"
    )

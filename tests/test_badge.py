"""The badge's SVG: well-formed XML whatever the name, the state's colour, the name escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from mesh.pipelines.badge import COLOURS, NONE, badge


def test_a_badge_is_well_formed_svg_with_the_states_colour_and_the_name_escaped() -> None:
    for state in (*COLOURS, None):
        svg = badge('a<b>&"c', state)
        root = ET.fromstring(svg)  # raises for text the escaping let through
        texts = [element.text for element in root.iter() if element.tag.endswith("text")]
        assert texts == ['a<b>&"c', state or "no builds"]
        fills = [element.get("fill") for element in root.iter() if element.tag.endswith("rect")]
        assert fills[1] == COLOURS.get(state or "", NONE)
    assert COLOURS["succeeded"] != COLOURS["failed"] != COLOURS["running"] != COLOURS["cancelled"]

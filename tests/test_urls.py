"""The one check of URLs that name a node (gossip, mDNS, seeds, steals, offers) and of request hosts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import InvalidUrl
from mesh.urls import address, authority, peer_url


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("http://127.0.0.1:7474", "http://127.0.0.1:7474"),
        ("HTTP://BuildBox.LAN:7474/", "http://buildbox.lan:7474"),
        ("http://[FD00::2]:7474/mesh/", "http://[fd00::2]:7474/mesh"),
        ("https://node_1.example.com", "https://node_1.example.com"),
    ],
)
def test_good_urls_come_out_in_one_form(text: str, normal: str) -> None:
    assert peer_url(text) == normal
    assert peer_url(normal) == normal


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:0", "port"),
        ("ftp://127.0.0.1:7474", "http:// or https://"),
        ("http://:7474", "host"),
        ("http://", "host"),
        ("http://bad host:7474", "white space"),
        ("http://x:7474\n", "white space"),
        ("http://user:pw@x:7474", "user name"),
        ("http://x:7474/?q=1", "query"),
        ("http://[1.2.3.4]:7474", "IPv6"),
        ("http://-x-:7474", "DNS name"),
        ("http://x:7474/a<b", "path"),
        ("127.0.0.1:7474", "http:// or https://"),
        ("http://" + "a" * 2000, "at most"),
    ],
)
def test_bad_urls_are_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(InvalidUrl, match=why):
        peer_url(text)


def test_addresses_and_hosts() -> None:
    assert address("http://[::1]:7474/x") == ("::1", 7474, "[::1]:7474")
    assert address("http://box") == ("box", 80, "box")
    assert address("https://box") == ("box", 443, "box")
    assert authority("LocalHost:7474") == "localhost:7474"
    assert authority("[0:0::1]") == "[::1]"
    for bad in ("x:99999", "[x]:1", "a b", "", "x:", "x:y", "h" * 400):
        with pytest.raises(InvalidUrl):
            authority(bad)


@given(st.text(max_size=60))
def test_any_text_is_a_url_in_normal_form_or_refused(text: str) -> None:
    try:
        normal = peer_url(text)
    except InvalidUrl:
        return
    assert peer_url(normal) == normal
    host, port, _ = address(normal)
    assert host and 0 < port < 65536

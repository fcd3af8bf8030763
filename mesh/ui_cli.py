"""``mesh ui``: a one-time login link to a node's web UI, for a person's browser.

A browser cannot sign requests with the mesh key, so the CLI, which holds it, asks
the node for a login token (``POST /v1/ui/logins``, signed) and prints the link
that redeems it for a session cookie (mesh.api.sessions). The link works once,
within five minutes. It is opened with the desktop's browser only where there is
one to open (``DISPLAY``, ``WAYLAND_DISPLAY`` or ``BROWSER`` set): on a server over
SSH, ``webbrowser`` would start a text browser in the terminal instead. ``mesh ui PAGE``
(a page's URL or path, as shared in a chat) gives a link that goes on to that page.
"""

from __future__ import annotations

import os
from urllib.parse import urlencode, urlsplit

from mesh.wire.client import NodeClient


def login_url(client: NodeClient, page: str | None = None) -> str:
    """A new one-time login URL of the node ``client`` talks to (NodeError if it refuses), that
    goes on to ``page`` (a path of the UI, or a URL of one: the node ignores any other)."""
    answer = client.request("POST", "/v1/ui/logins")
    url = client.url + str(answer["path"])
    if page:
        path = urlsplit(page).path or "/"
        url += "&" + urlencode({"next": path})
    return url


def open_in_browser(url: str) -> bool:
    """Open ``url`` in the desktop's browser, if there is one; whether it was opened."""
    if not any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")):
        return False
    import webbrowser

    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False

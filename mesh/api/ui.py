"""The web UI's routes: its pages, its two static files, logging in and out.

| path | what |
| --- | --- |
| ``GET /`` | open: the overview; counts and peers without a session, projects and jobs with one |
| ``GET /ui/{page}`` | the detailed pages (a session, or a signed request): see below |
| ``GET /ui/assets/app.js``, ``app.css`` | open: the UI's script and style (no data in them) |
| ``POST /v1/ui/logins`` | signed (``mesh ui``): a one-time login path, ``/ui/login?token=T`` |
| ``GET /ui/login?token=T[&next=P]`` | redeems a login token for a session cookie; goes on to ``/`` (or P, a UI page) |
| ``POST /ui/logout`` | ends the session (CSRF token needed) and clears its cookie |

Every page is the one HTML file mesh/web/app.html, which routes on its URL in the
browser (mesh/web/app.js) and reads the API (``/v1/...``, ``/status``, ``/files``) with
the session (mesh.api.sessions). The pages' URLs are stable, to share: ``/ui/jobs/ID``,
``/ui/jobs/ID/tasks/NAME`` (a task's log), ``/ui/projects/NAME``,
``/ui/builds/NAME/N``, ``/ui/mesh``, ``/ui/files`` (``?dir=HOST:DIR&from=N``: the
watched files, one directory's, a page at a time). A page is served with its session's CSRF
token in a ``<meta>`` element, which its script sends with every action.
Without a session the detailed pages answer 401: a short page saying to run
``mesh ui`` to a browser, the API's error message to anything else.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from mesh.api.http import ApiError, authenticate, good_session, read_body, reply, signed, ui_session
from mesh.api.services import services
from mesh.api.sessions import COOKIE, CSRF_HEADER, LOGIN_SECONDS, SESSION_SECONDS, Session
from mesh.wire.auth import AuthError

_WEB = Path(__file__).resolve().parent.parent / "web"
#: The static files the pages load, by name, with their media types.
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_MARK = "<!--SESSION-->"
#: What the pages may load and run: only what the node serves.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_REFUSED = """<!doctype html><html lang="en"><meta charset="utf-8"><title>mesh: log in</title>
<link rel="stylesheet" href="/ui/assets/app.css"><main class="refused"><h1>mesh: not logged in</h1>
<p>{message}</p><p>On a machine that holds the mesh key, run <code>mesh ui</code> (add
<code>--node URL</code> for another node) and open the login link it prints; <code>mesh ui
{here}</code> gives a link that goes on to this page.</p>
<p><a href="/">The open overview</a> shows this node's counts without logging in.</p></main></html>
"""

_WELCOME = """<!doctype html><html lang="en"><meta charset="utf-8"><title>mesh: logged in</title>
<meta http-equiv="refresh" content="0; url={next}"><link rel="stylesheet" href="/ui/assets/app.css">
<main class="refused"><h1>Logged in</h1><p><a href="{next}">Go on</a>.</p></main></html>
"""
#: A page a login may go on to: the overview or a page of the UI, nothing of another site
#: (no ``//host``, no scheme, no backslash, no query), so a login link cannot send a person away.
_NEXT = re.compile(r"/(ui/[A-Za-z0-9._~:@+%-][A-Za-z0-9._~:@+%/-]*)?")


def next_page(text: str | None) -> str:
    """Where a login goes on to: ``text`` if it is a page of the UI (:data:`_NEXT`), else ``/``."""
    return text if text is not None and _NEXT.fullmatch(text) and "//" not in text else "/"


def _shell(request: Request, session: Session | None) -> Response:
    """The UI's page, with the session's CSRF token and end (or none: the open overview)."""
    page = (_WEB / "app.html").read_text(encoding="utf-8")
    if session is not None:
        facts = {"csrf": services(request).sessions.csrf_token(session), "expires": session.expires}
        meta = f'<meta name="mesh-session" content="{html.escape(json.dumps(facts))}">'
        page = page.replace(_MARK, meta, 1)
    # The page is made per session: never kept by a cache, never framed by another site, and it
    # runs only the node's own script (the log's colours are inline styles).
    headers = {
        "cache-control": "no-store",
        "x-frame-options": "DENY",
        "referrer-policy": "same-origin",
        "content-security-policy": CSP,
    }
    return HTMLResponse(page, headers=headers)


async def overview(request: Request) -> Response:
    """``GET /``: the overview; open, and detailed for a session."""
    return _shell(request, good_session(request))


async def page(request: Request) -> Response:
    """``GET /ui/...``: a detailed page, for a session or a signed request; else 401."""
    try:
        session = ui_session(request)
        if session is None:
            authenticate(request, await read_body(request, 0))
    except AuthError as exc:
        if "text/html" not in request.headers.get("accept", "") or signed(request):
            raise
        if COOKIE not in request.cookies:
            message = "This page shows jobs, builds and logs: log in first."
            return HTMLResponse(_REFUSED.format(message=message, here=_here(request)), 401)
        response = HTMLResponse(_REFUSED.format(message=html.escape(str(exc)), here=_here(request)), 401)
        response.delete_cookie(COOKIE, path="/")  # forged, expired or logged out: of no more use
        return response
    return _shell(request, session)


def _here(request: Request) -> str:
    """The page asked for, as ``mesh ui`` takes it (escaped for the page)."""
    return html.escape(next_page(request.url.path))


async def asset(request: Request) -> Response:
    """``GET /ui/assets/NAME``: the script or the style of the pages (open: they hold no data)."""
    name = request.url.path.rsplit("/", 1)[-1]
    return Response((_WEB / name).read_bytes(), media_type=ASSETS[name], headers={"cache-control": "no-cache"})


async def new_login(request: Request) -> Response:
    """``POST /v1/ui/logins`` (signed): a one-time login path for a person's browser."""
    authenticate(request, await read_body(request, 0))
    token = services(request).sessions.login_token()
    return reply(request, {"path": f"/ui/login?token={token}", "expires_in": LOGIN_SECONDS}, status=201)


async def login(request: Request) -> Response:
    """``GET /ui/login?token=T``: a session cookie for a good token, then the overview."""
    token = request.query_params.get("token")
    if token is None:
        authenticate(request, await read_body(request, 0))  # 401 for a browser without a token
        raise ApiError(400, "a login link carries ?token=...: run `mesh ui` for one")
    try:
        cookie = services(request).sessions.redeem(token)
    except AuthError as exc:
        return HTMLResponse(_REFUSED.format(message=html.escape(str(exc)), here="/"), 401)
    # A page that goes on to / rather than a redirect: a SameSite=Strict cookie set in a
    # navigation that came from another site (a link in a web mail) would not be sent on
    # its redirect, and the person would land logged out; a navigation the page starts is ours.
    welcome = _WELCOME.format(next=html.escape(next_page(request.query_params.get("next"))))
    response = HTMLResponse(welcome, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"})
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """``POST /ui/logout``: end the session (its CSRF token needed), clear its cookie."""
    session = ui_session(request)
    if session is None:
        authenticate(request, await read_body(request, 0))  # a signed request has no session to end
    else:
        services(request).sessions.check_csrf(session, request.headers.get(CSRF_HEADER))
        services(request).sessions.end(session)
    response = reply(request, {"logged_out": session is not None})
    response.delete_cookie(COOKIE, path="/")
    return response

"""Sessions for people: the UI's way in, beside the mesh key's signatures.

A browser cannot sign requests with the mesh key (mesh.wire.auth), so a person logs in
once: ``mesh ui`` asks the node, with a signed request, for a one-time login token
(:meth:`Sessions.login_token`); opening ``/ui/login?token=T`` redeems it
(:meth:`Sessions.redeem`) for a session cookie, ``mesh_session``, which is:

- signed: ``SID.EXPIRES.MAC``, the MAC a keyed BLAKE3 under a key derived from the
  mesh key, so the node keeps no table of sessions and they survive its restart (a
  new mesh key ends every session);
- HttpOnly and SameSite=Strict (scripts cannot read it, other sites cannot send it);
- expiring after :data:`SESSION_SECONDS`.

A request with the cookie and no signature is let in only by the handlers marked
with :func:`for_people` (the UI's reads and actions: never blob uploads, gossip or
the peers' endpoints), and one that changes state (any method but GET and HEAD)
must carry the session's CSRF token in the ``x-mesh-csrf`` header, a MAC of the
session id under another derived key: the page receives it in its HTML
(mesh.api.ui). Logging out remembers the session id until its expiry in
``$MESH_HOME/ui-logouts``, so a logged-out cookie stays refused after a restart too.

Login tokens live in memory only (a restart forgets them: ``mesh ui`` makes a new
one in a fraction of a second), for :data:`LOGIN_SECONDS`, and work once.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3

from mesh.wire.auth import AuthError, MeshKey

#: The session cookie's name.
COOKIE = "mesh_session"
#: The header that carries a session's CSRF token on a state-changing request.
CSRF_HEADER = "x-mesh-csrf"
#: Seconds a session lasts: a working day; `mesh ui` gives a new one in a second.
SESSION_SECONDS = 12 * 3600
#: Seconds a login token waits to be used: time to copy a URL into a browser.
LOGIN_SECONDS = 300
#: Login tokens waiting at once, at most (the oldest is forgotten past it).
MAX_PENDING_LOGINS = 64
#: Methods that change nothing, which need no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD"})
_SESSION_CONTEXT = "mesh ui session v1"
_CSRF_CONTEXT = "mesh ui csrf v1"
_LOGIN_AGAIN = "run `mesh ui` for a new login link"

log = logging.getLogger("mesh.ui")

Handler = Callable[..., Any]
_FOR_PEOPLE: set[Handler] = set()


def for_people(handler: Handler) -> Handler:
    """Mark an API handler as one a UI session may call (the signed way in stays open)."""
    _FOR_PEOPLE.add(handler)
    return handler


def takes_sessions(handler: object) -> bool:
    """Whether :func:`for_people` marked ``handler``."""
    return handler in _FOR_PEOPLE


@dataclass(frozen=True)
class Session:
    """A checked session: its id and when it ends (seconds since the epoch)."""

    sid: str
    expires: int


class Sessions:
    """Login tokens, session cookies and CSRF tokens of one node, all from its mesh ``key``.

    ``logouts_path``: where ended sessions are remembered until they expire (None: in
    memory only).
    """

    def __init__(self, key: MeshKey, logouts_path: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self._session_key = blake3.blake3(key.secret, derive_key_context=_SESSION_CONTEXT).digest()
        self._csrf_key = blake3.blake3(key.secret, derive_key_context=_CSRF_CONTEXT).digest()
        self._clock = clock
        self._logins: dict[str, float] = {}
        self._logouts_path = logouts_path
        self._ended: dict[str, int] = self._read_logouts()

    def __repr__(self) -> str:
        return f"Sessions(pending_logins={len(self._logins)}, ended={len(self._ended)})"

    # -- login tokens ----------------------------------------------------------------

    def login_token(self) -> str:
        """A new one-time login token, good for :data:`LOGIN_SECONDS`."""
        now = self._clock()
        self._logins = {t: until for t, until in self._logins.items() if until > now}
        while len(self._logins) >= MAX_PENDING_LOGINS:
            del self._logins[next(iter(self._logins))]
        token = secrets.token_urlsafe(32)
        self._logins[token] = now + LOGIN_SECONDS
        return token

    def redeem(self, token: str) -> str:
        """The cookie value of a new session for a login ``token``, which is then used up.
        AuthError if it is unknown, used or expired."""
        until = self._logins.pop(token, None)
        if until is None or until <= self._clock():
            raise AuthError(
                f"this login link was used already or has expired (they last {LOGIN_SECONDS // 60} min); {_LOGIN_AGAIN}"
            )
        sid = secrets.token_hex(16)
        expires = int(self._clock()) + SESSION_SECONDS
        return f"{sid}.{expires}.{self._mac(sid, expires)}"

    # -- sessions --------------------------------------------------------------------

    def check(self, cookie: str) -> Session:
        """The session a cookie value stands for; AuthError if it is malformed, forged, expired
        or logged out."""
        sid, _, rest = cookie.partition(".")
        expires_text, _, mac = rest.partition(".")
        if not (len(sid) == 32 and expires_text.isdigit() and len(expires_text) <= 12 and len(mac) == 64):
            raise AuthError(f"malformed session cookie; {_LOGIN_AGAIN}")
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(sid, expires)):
            raise AuthError(f"this session was not made by a node of this mesh (a changed mesh key?); {_LOGIN_AGAIN}")
        if expires <= self._clock():
            raise AuthError(f"your session has expired; {_LOGIN_AGAIN}")
        if sid in self._ended:
            raise AuthError(f"this session was logged out; {_LOGIN_AGAIN}")
        return Session(sid, expires)

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of ``session``, which its state-changing requests carry."""
        return blake3.blake3(session.sid.encode(), key=self._csrf_key).hexdigest()

    def check_csrf(self, session: Session, token: str | None) -> None:
        """AuthError unless ``token`` is the session's CSRF token."""
        if not token or not hmac.compare_digest(token, self.csrf_token(session)):
            raise AuthError(
                f"missing or wrong {CSRF_HEADER} header: a request that changes something carries the token "
                "the page was given; reload the page"
            )

    def end(self, session: Session) -> None:
        """Log ``session`` out, here and after a restart."""
        self._ended[session.sid] = session.expires
        if self._logouts_path is not None:
            try:
                with open(self._logouts_path, "a", encoding="ascii") as f:
                    f.write(f"{session.sid} {session.expires}\n")
            except OSError as exc:  # a full disk: the logout holds until the node restarts
                log.error("a logout could not be written to %s (%s): it holds until a restart", self._logouts_path, exc)

    def _mac(self, sid: str, expires: int) -> str:
        return blake3.blake3(f"{sid}.{expires}".encode(), key=self._session_key).hexdigest()

    def _read_logouts(self) -> dict[str, int]:
        """The ended sessions not yet expired; the file is rewritten without the others."""
        if self._logouts_path is None:
            return {}
        now = self._clock()
        ended: dict[str, int] = {}
        try:
            with open(self._logouts_path, encoding="ascii", errors="replace") as f:
                for line in f:
                    sid, _, expires = line.strip().partition(" ")
                    if expires.isdigit() and int(expires) > now:
                        ended[sid] = int(expires)
        except FileNotFoundError:
            return {}
        except OSError as exc:  # unreadable: sessions logged out before could be used again until they expire
            log.error(
                "the logouts in %s cannot be read (%s): sessions logged out earlier are not refused",
                self._logouts_path,
                exc,
            )
            return {}
        tmp = f"{self._logouts_path}.tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.writelines(f"{sid} {expires}\n" for sid, expires in ended.items())
            os.replace(tmp, self._logouts_path)
        except OSError as exc:  # a full disk: the file keeps its expired lines until the next start
            log.warning("%s could not be rewritten without its expired lines: %s", self._logouts_path, exc)
        return ended

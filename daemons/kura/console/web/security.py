"""The web layer's own defences (the vault decides who may do what; these
keep a browser from being tricked into asking):

- CSRF: every form carries a token bound to the session cookie (an HMAC of
  it, so nothing is stored and it survives a console restart), or before
  sign-in to a random ``kura_pre`` cookie; a POST also needs a same-origin
  ``Origin`` when the browser sends one.
- Headers: a Content-Security-Policy that allows no inline script or style,
  HSTS, frames denied, no referrer, no caching of any page.
- Cookies: Secure, HttpOnly, SameSite=Strict, scoped to the whole site.
- Sign-in attempts are rate limited per client address, before the vault's
  own per-account lockout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

SESSION_COOKIE = "kura_session"
PRE_COOKIE = "kura_pre"
LANG_COOKIE = "kura_lang"
CSRF_FIELD = "csrf"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)

PAGE_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def csrf_token(secret: str) -> str:
    """The form token for a session (or pre-session) cookie value."""
    return hmac.new(secret.encode(), b"kura-csrf-v1", hashlib.sha256).hexdigest()


def csrf_secret(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRE_COOKIE)


def csrf_valid(request: web.Request, submitted: str | None) -> bool:
    secret = csrf_secret(request)
    if not secret or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret), submitted)


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request came from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:  # what the browser itself knows; Origin is "null" under no-referrer
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True  # an old browser or a script: the CSRF token still decides
    return origin == f"{request.scheme}://{request.host}"


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def ensure_pre_cookie(request: web.Request, response: web.StreamResponse) -> str:
    """The pre-session secret for forms shown before sign-in (made if missing)."""
    value = request.cookies.get(PRE_COOKIE)
    if not value:
        value = secrets.token_urlsafe(32)
        set_cookie(response, PRE_COOKIE, value, None)
    return value


@dataclass
class RateLimiter:
    """At most ``limit`` attempts per ``window`` seconds from one address."""

    limit: int = 10
    window: float = 60.0
    attempts: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        seen = self.attempts.setdefault(key, deque())
        while seen and seen[0] <= moment - self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            return False
        seen.append(moment)
        if len(self.attempts) > 10_000:  # forget idle addresses
            for k in [k for k, v in self.attempts.items() if not v]:
                del self.attempts[k]
        return True

    def retry_after(self, key: str, now: float | None = None) -> int:
        moment = time.monotonic() if now is None else now
        seen = self.attempts.get(key)
        if not seen:
            return 0
        return max(1, int(seen[0] + self.window - moment) + 1)

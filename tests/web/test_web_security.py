"""Security of the web layer, tried from outside the way an attacker or a
careless browser would, against the real console, vault and PostgreSQL:

- every POST page route (read from the console's own router, so new pages
  are covered the day they are added) refuses a missing CSRF token, a token
  made for another session, and a cross-site request, for every role that
  could otherwise use it, with a 403 page and no change;
- every page carries the CSP, HSTS, frame, sniffing and caching headers, and
  no page a role can open holds inline script, inline style or a handler;
- sign-in is rate limited per address, in the visitor's language;
- error pages (404, 405, 413, 403, CSRF, a malformed form) speak the
  visitor's language and never show internals;
- no My Number reaches a URL, the browser's history, a page title or a log;
- an idle session ends after the SA's idle time and the user is told so;
- the page role matrix, written here from DESIGN.md's role table.

Requests go through a small HTTPS client (``WebClient``) that verifies the
appliance's certificate, keeps cookies, follows no redirect, and can speak
from any address of 127.0.0.0/8 (the rate limiter keys on it). The browser
is used where what matters is what a user sees. Every account signed in or
out here is a throwaway one made for this module; the shared fixture users
are only read with (and the SA's policy is restored)."""

from __future__ import annotations

import http.client
import itertools
import random
import re
import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from playwright.sync_api import BrowserContext, Page, expect

from kura import config as kura_config
from kura.console.app import init_app
from kura.console.web import security
from kura.console.web.menu import MENU
from kura.core.audit import looks_like_my_number
from kura.devserver import LocalAppliance
from tests.policy_support import set_policy
from tests.support import Api, hyphenated, my_number, propose_and_approve, provision, signed_in
from tests.web.conftest import session_cookie

ROLES = ("MU", "MA", "SA", "DA")
ANON = "anonymous"

CSRF_JA = "フォームの有効期限が切れたか、別のサイトから送信されました。"
CSRF_EN = "The form expired or was sent from another site."
DENIED_JA = "この操作を行う権限がありません。"
DENIED_EN = "Your role is not allowed to do this."
NOT_FOUND_JA = "そのページはありません。"
NOT_FOUND_EN = "There is no such page."
TOO_LARGE_JA = "リクエストが大きすぎます。"
TOO_LARGE_EN = "The request body is too large."
NOT_ALLOWED_JA = "この操作はできません。"
NOT_ALLOWED_EN = "This page does not accept that request."
RATE_JA = "ログイン試行が多すぎます"
RATE_EN = "Too many sign-in attempts"
EXPIRED_JA = "セッションが終了しました。もう一度ログインしてください。"
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|psycopg|asyncio|aiohttp|jinja2|Exception|Error\(|"
    r"SELECT |INSERT |UPDATE |/work/|/tmp/|/usr/|site-packages"
)

SIGNED_IN = frozenset(ROLES)
EVERYONE = frozenset({ANON, *ROLES})
MU, MA, SA, DA = (frozenset({r}) for r in ROLES)
MU_MA = frozenset({"MU", "MA"})


# --- who may open which page: DESIGN.md's role table, written out --------------
#
# MU registers payees, searches, reveals for a declared purpose and exports
# for forms; MA approves requests, corrects records, approves disposals and
# bulk exports (so finds records too); SA owns the security policy, the audit
# log and the reports, and never sees a number; DA owns accounts and the
# appliance, never sees a number and approves nothing. Readings where the
# table is silent are noted beside the row.

RouteKey = tuple[str, str]  # (method, path pattern as the router writes it)

EXPECTED: dict[RouteKey, frozenset[str]] = {
    # signing in, and what anyone may reach before it
    ("GET", "/login"): EVERYONE,
    ("POST", "/login"): EVERYONE,
    ("POST", "/language"): EVERYONE,
    ("GET", "/sealed"): EVERYONE,
    ("GET", "/unseal"): EVERYONE,  # custodians type their shares; no account needed
    ("POST", "/unseal"): EVERYONE,
    # the new holder's activation: the code's two halves are their only credential
    ("GET", "/activate"): EVERYONE,
    ("POST", "/activate"): EVERYONE,
    # the employee's one-time link: the token is their only credential
    ("GET", "/r/{token}"): EVERYONE,
    ("POST", "/r/{token}"): EVERYONE,
    # one's own session and account
    ("GET", "/"): SIGNED_IN,
    ("GET", "/account"): SIGNED_IN,
    ("GET", "/account/password"): SIGNED_IN,
    ("POST", "/account/password"): SIGNED_IN,
    ("GET", "/account/totp"): SIGNED_IN,
    ("POST", "/account/totp"): SIGNED_IN,
    ("POST", "/logout"): SIGNED_IN,
    # use: MU searches, reveals and exports; MA finds records to correct them
    # and approves bulk exports
    ("GET", "/search"): MU_MA,
    ("POST", "/search"): MU_MA,
    ("GET", "/subjects/{id}"): MU_MA,
    ("POST", "/subjects/{id}/reveal"): MU,
    ("POST", "/subjects/{id}/correct"): MA,  # "correct records"
    ("GET", "/exports"): MU_MA,
    ("POST", "/exports"): MU,
    ("GET", "/exports/{id}"): MU_MA,
    ("POST", "/exports/{id}/download"): MU,
    ("POST", "/exports/{id}/decision"): MA,
    # collection from employees: an MU or an MA issues the link (issue #4),
    # only the MA sees the documents and decides
    ("GET", "/requests"): MU_MA,
    ("GET", "/requests/new"): MU_MA,
    ("POST", "/requests/new"): MU_MA,
    ("GET", "/requests/{id}"): MU_MA,
    ("GET", "/requests/{id}/documents/{document_id}"): MA,
    ("POST", "/requests/{id}/approve"): MA,
    ("POST", "/requests/{id}/reject"): MA,
    ("POST", "/requests/{id}/reissue"): MU_MA,
    ("POST", "/requests/{id}/cancel"): MU_MA,
    # payees: only the MU registers directly
    ("GET", "/payees/new"): MU,
    ("POST", "/payees/new"): MU,
    ("GET", "/payees/import"): MU,
    ("POST", "/payees/import"): MU,
    ("GET", "/payees/import/template.csv"): MU,
    ("GET", "/payees/import/{job}"): MU,
    ("GET", "/payees/import/{job}/progress"): MU,
    ("GET", "/payees/import/{job}/report.csv"): MU,
    # disposal: the MA approves; the due list is where the clerk (MU) who
    # runs the lifecycle proposes (the table is silent on who proposes;
    # separation of duties says not the approver alone). Records: the MA
    # who approved and the SA who audits.
    ("GET", "/disposal"): MU_MA,
    ("POST", "/disposal/propose"): MU_MA,
    ("POST", "/disposal/batches/{id}/decision"): MA,
    ("GET", "/disposal/records"): frozenset({"MA", "SA"}),
    # retention rules: the SA edits them (issue #4); the clerks read them
    ("GET", "/retention"): frozenset({"MU", "MA", "SA"}),
    ("POST", "/retention"): SA,
    # audit and reports: the SA. The handling-status ledger (取扱状況) is also
    # the MA's, who manages the stored numbers (the seed's MA row).
    ("GET", "/audit"): SA,
    ("GET", "/audit/export"): SA,
    ("POST", "/audit/export/download"): SA,
    ("POST", "/audit/export/verify"): SA,
    ("GET", "/reports/access"): SA,
    ("GET", "/reports/ledger"): frozenset({"SA", "MA"}),
    # administration
    # The MA sees the policy page (a waiting change, never the form) where the
    # appliance has one SA: then the MA is the second person for a weakening.
    ("GET", "/admin/policy"): frozenset({"SA", "MA"}),
    ("POST", "/admin/policy"): SA,
    ("POST", "/admin/policy/approve"): frozenset({"SA", "MA"}),
    ("POST", "/admin/policy/reject"): frozenset({"SA", "MA"}),
    ("POST", "/admin/policy/cancel"): SA,
    ("GET", "/admin/users"): DA,
    ("POST", "/admin/users"): DA,
    ("POST", "/admin/users/role"): DA,
    ("POST", "/admin/users/disable"): DA,
    ("POST", "/admin/users/enable"): DA,
    ("POST", "/admin/users/reset"): DA,
    ("POST", "/admin/users/cancel"): DA,  # only the proposing DA cancels (issue 10)
    # the DA's account proposals: an SA or MA approves, never the DA (issue 10)
    ("GET", "/admin/approvals"): frozenset({"SA", "MA"}),
    ("POST", "/admin/approvals/approve"): frozenset({"SA", "MA"}),
    ("POST", "/admin/approvals/reject"): frozenset({"SA", "MA"}),
    ("GET", "/admin/status"): DA,
    # the HA pair: its page for the DA and (read-only) the SA; the planned
    # switchover is the DA's alone (issue 11)
    ("GET", "/admin/ha"): frozenset({"SA", "DA"}),
    ("POST", "/admin/ha/switchover"): DA,
    # pairing a standby: the DA proposes and delivers, an SA approves or rejects
    ("GET", "/admin/ha/pair"): frozenset({"SA", "DA"}),
    ("POST", "/admin/ha/pair"): DA,
    ("POST", "/admin/ha/pairings/{id}/approve"): SA,
    ("POST", "/admin/ha/pairings/{id}/reject"): SA,
    ("POST", "/admin/ha/pairings/{id}/deliver"): DA,
    # endpoint agents: enrolment tokens, the agents list, revocation and the
    # per-profile policies are the SA's (DESIGN.md: "SA … agent policies"; issue 12)
    ("GET", "/admin/agents"): SA,
    ("GET", "/admin/agents/tokens"): SA,
    ("POST", "/admin/agents/tokens"): SA,
    ("POST", "/admin/agents/tokens/{token_id}/withdraw"): SA,
    ("GET", "/admin/agents/{agent_id}/revoke"): SA,
    ("POST", "/admin/agents/{agent_id}/revoke"): SA,
    ("GET", "/admin/agents/policy/{profile}"): SA,
    ("POST", "/admin/agents/policy/{profile}"): SA,
    # the audit-integrity incident: everyone is told why Kura stopped (a clerk
    # is sent there); only an SA and a DA acknowledge it (issue 10)
    ("GET", "/audit-integrity"): EVERYONE,
    ("POST", "/audit-integrity/acknowledge"): frozenset({"SA", "DA"}),
}

# Routes the router has and EXPECTED does not decide yet, for the lead to
# review (each must move into EXPECTED with its DESIGN.md reading). Empty
# when every route is decided; a route in neither fails
# test_every_route_is_decided.
PENDING_REVIEW: frozenset[RouteKey] = frozenset()

# The pages the issue names besides the menu; every one of them is in EXPECTED.
NAMED_PAGES = ("/", "/account", "/search", "/exports", "/requests/new")


# --- a small HTTPS client --------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def location(self) -> str:
        return self.header("Location") or ""

    @property
    def is_html(self) -> bool:
        return (self.header("Content-Type") or "").startswith("text/html")

    def __repr__(self) -> str:  # what an assertion prints: never a whole page
        return f"Reply({self.status}, {self.location or self.text[:300]!r})"


_ADDRESSES = itertools.count(random.Random().randrange(1, 200) * 256)


def fresh_address() -> str:
    """A loopback address no other test speaks from (the sign-in rate
    limiter counts per address; 127.0.0.1 belongs to the browser tests)."""
    n = next(_ADDRESSES)
    return f"127.{77 + n // 65536 % 100}.{n // 256 % 256}.{n % 256 or 1}"


def multipart(fields: Sequence[tuple[str, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body (what an upload form sends; aiohttp reads
    it for plain forms too), the fields in order (the CSRF token first)."""
    boundary = "kura-test-" + secrets.token_hex(8)
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


@dataclass
class WebClient:
    """A browser reduced to what these tests need: HTTPS verified against the
    appliance's own certificate, a cookie jar, a chosen source address, no
    redirects followed."""

    base: str
    cafile: Path
    source: str = "127.0.0.1"
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self, method: str, path: str, *, form: Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None, content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        parts = urlsplit(self.base)
        assert parts.hostname and parts.port
        context = ssl.create_default_context(cafile=str(self.cafile))
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, context=context, timeout=120,
            source_address=(self.source, 0),
        )
        send: dict[str, str] = {}
        if self.cookies:
            send["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body, content_type = multipart(form)
        if content_type:
            send["Content-Type"] = content_type
        send.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=send)
            raw = conn.getresponse()
            reply = Reply(raw.status, raw.getheaders(), raw.read())
        finally:
            conn.close()
        self._keep_cookies(reply)
        return reply

    def _keep_cookies(self, reply: Reply) -> None:
        for name, value in reply.headers:
            if name.lower() != "set-cookie":
                continue
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            for key, morsel in jar.items():
                if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = morsel.value

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: Sequence[tuple[str, str]], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)

    def csrf(self) -> str:
        """The token the console put in this visitor's forms."""
        secret = self.cookies.get(security.SESSION_COOKIE) or self.cookies.get(
            security.PRE_COOKIE
        )
        assert secret, "no session or pre-session cookie yet"
        return security.csrf_token(secret)


def client_for(
    appliance: LocalAppliance, who: Api | None, source: str = "127.0.0.1", lang: str = ""
) -> WebClient:
    """A visitor: signed in with ``who``'s session, or anonymous with the
    pre-session cookie the sign-in page hands out."""
    client = WebClient(appliance.url, appliance.cert, source)
    if lang:
        client.cookies[security.LANG_COOKIE] = lang
    if who is not None:
        assert who.token
        client.cookies[security.SESSION_COOKIE] = who.token
    else:
        r = client.get("/login")
        assert r.status == 200, r
        assert security.PRE_COOKIE in client.cookies
    return client


# --- the console's routes, from its own router -----------------------------------


@dataclass(frozen=True)
class PageRoute:
    method: str
    pattern: str  # as the router formats it: /subjects/{id}
    roles: frozenset[str]  # what the handler declares with @page (empty: any role)
    anonymous: bool
    declared: bool  # False: the handler skipped @page (nobody checks the visitor)

    @property
    def key(self) -> RouteKey:
        return (self.method, self.pattern)

    def users(self) -> tuple[str, ...]:
        """Who could use the route, by its own declaration."""
        if self.anonymous:
            return (ANON, *ROLES)
        return tuple(r for r in ROLES if not self.roles or r in self.roles)

    def path(self, values: dict[str, str]) -> str:
        names = re.findall(r"{(\w+)}", self.pattern)
        return self.pattern.format(**{n: values.get(n) or str(uuid.uuid4()) for n in names})


def discover(appliance: LocalAppliance) -> list[PageRoute]:
    """Every page route, as the running console has it (the app is built
    from the appliance's configuration, not started)."""
    app = init_app(kura_config.load(appliance.config_path))
    found = []
    for resource in app.router.resources():
        if isinstance(resource, web.StaticResource):
            continue
        info = resource.get_info()
        pattern = str(info.get("formatter") or info.get("path") or "")
        if pattern.startswith("/api/"):
            continue
        for route in resource:
            if route.method == "HEAD":
                continue
            handler = route.handler
            found.append(
                PageRoute(
                    route.method,
                    pattern,
                    frozenset(str(r) for r in getattr(handler, "kura_roles", ())),
                    bool(getattr(handler, "kura_anonymous", False)),
                    hasattr(handler, "kura_roles"),
                )
            )
    return found


@pytest.fixture(scope="module")
def page_routes(appliance: LocalAppliance) -> list[PageRoute]:
    routes = discover(appliance)
    assert any(r.key == ("POST", "/login") for r in routes), "the router has no sign-in?"
    return routes


# --- accounts and data of this module -----------------------------------------------


@pytest.fixture(scope="module")
def clerks(admin: Api) -> Iterator[dict[str, Api]]:
    """A throwaway signed-in account per role: these tests sign out, switch
    languages and idle out, which the shared fixture users must not. The SA
    is disabled afterwards: with one active SA on the shared appliance, the
    MA is the second person for a weakening of the policy."""
    yield {role: provision(admin, f"websec-{role.lower()}", role) for role in ROLES}
    # A session of its own: the shared DA's may have idled out in the idle test.
    da = admin.sign_in(admin.username, admin.password, admin.totp_secret)
    assert da.patch("/users/websec-sa", {"disabled": True}).status == 200


@dataclass
class Registered:
    """The subjects this module registered, by number (every one generated)."""

    by_number: dict[str, str] = field(default_factory=dict)  # number -> subject id
    rng: random.Random = field(default_factory=lambda: random.Random("web-security"))

    def register(self, mu: Api) -> tuple[str, str]:
        while True:
            number = my_number(self.rng)
            code = f"WS-{secrets.token_hex(4)}"
            r = mu.post("/payees", {"code": code, "name": "検査 太郎",
                                    "name_kana": "ケンサ タロウ", "number": number})
            if r.status == 409:  # another module holds this generated number
                continue
            assert r.status in (200, 201), r.body[:300]
            self.by_number[number] = str(r.json["subject"]["id"])
            return number, self.by_number[number]


@pytest.fixture(scope="module")
def registered() -> Registered:
    return Registered()


@pytest.fixture(scope="module")
def subject(clerks: dict[str, Api], registered: Registered) -> tuple[str, str]:
    """One payee (number, id) to fill {id} in routes with."""
    return registered.register(clerks["MU"])


@pytest.fixture(scope="module")
def path_values(subject: tuple[str, str], clerks: dict[str, Api]) -> dict[str, str]:
    """Values for the routes' variables: a real subject, a well-formed link
    token, a real user; anything else gets a fresh UUID."""
    return {
        "id": subject[1],
        "token": secrets.token_urlsafe(32),
        "username": clerks["MU"].username,
        "profile": "clerk-pc",
    }


def audit_head(reader: Api) -> int:
    r = reader.get("/audit", query={"limit": 1})
    assert r.status == 200, r.body[:300]
    return int(r.json["entries"][0]["seq"])


def audited_since(reader: Api, seq: int) -> list[dict[str, Any]]:
    """Audit entries after ``seq``, less the reader's own reading of the log."""
    r = reader.get("/audit", query={"limit": 500})
    assert r.status == 200, r.body[:300]
    return [
        e for e in r.json["entries"]
        if int(e["seq"]) > seq and not (e["actor"] == reader.username
                                        and e["action"] == "audit.list")
    ]


def visitor_for(
    appliance: LocalAppliance, clerks: dict[str, Api], who: str, **kw: Any
) -> WebClient:
    return client_for(appliance, None if who == ANON else clerks[who], **kw)


# --- CSRF and origin ---------------------------------------------------------------------


def forged_token(client: WebClient, other: str | None = None) -> str:
    """A well-made token for another session (``other``, a real session or
    pre-session cookie, or a random one): what an attacker gets by visiting
    the console himself."""
    other = other or secrets.token_urlsafe(32)
    assert other not in client.cookies.values()
    return security.csrf_token(other)


def test_every_post_route_refuses_forged_requests(
    appliance: LocalAppliance, page_routes: list[PageRoute], clerks: dict[str, Api],
    users: dict[str, Api], path_values: dict[str, str],
) -> None:
    posts = [r for r in page_routes if r.method == "POST"]
    assert {"/login", "/logout", "/language"} <= {r.pattern for r in posts}
    # The attacker's own sessions: signed in (another user) and anonymous.
    attacker_session = users["MU"].token or ""
    attacker_pre = client_for(appliance, None).cookies[security.PRE_COOKIE]

    def attackers_token(client: WebClient) -> str:
        signed_in = security.SESSION_COOKIE in client.cookies
        return forged_token(client, attacker_session if signed_in else attacker_pre)

    attempts: list[tuple[str, dict[str, str], Callable[[WebClient], str | None]]] = [
        ("no token", {}, lambda c: None),
        ("another session's token", {}, attackers_token),
        ("a made-up session's token", {}, forged_token),
        ("cross-site (Sec-Fetch-Site)", {"Sec-Fetch-Site": "cross-site"}, WebClient.csrf),
        ("cross-site (Origin)", {"Origin": "https://attacker.example"}, WebClient.csrf),
        ("same-site, other origin", {"Sec-Fetch-Site": "same-site"}, WebClient.csrf),
    ]
    before = audit_head(users["SA"])
    failures = []
    tried = 0
    for route in posts:
        path = route.path(path_values)
        for who in route.users():
            client = visitor_for(appliance, clerks, who, source=fresh_address())
            for what, headers, token in attempts:
                fields = [("next", "/"), ("language", "en"), ("query", "x")]
                made = token(client)
                if made is not None:
                    fields.insert(0, (security.CSRF_FIELD, made))
                r = client.post(path, fields, headers=headers)
                tried += 1
                if r.status != 403 or CSRF_JA not in r.text:
                    failures.append(f"{route.method} {path} as {who}, {what}: {r!r}")
                elif security.SESSION_COOKIE in (r.header("Set-Cookie") or ""):
                    failures.append(f"{route.method} {path} as {who}, {what}: touched the session")
    assert not failures, "\n".join(failures)
    # Nothing reached the vault: no entry by anyone but the reader.
    assert audited_since(users["SA"], before) == []
    # The sessions are alive (no sign-out went through) and in Japanese still.
    for role, clerk in clerks.items():
        me = clerk.get("/session")
        assert me.status == 200, (role, me.body[:200])
        assert me.json["language"] == "ja", role
    assert tried >= len(attempts) * len(posts)


def test_the_right_token_is_accepted(
    appliance: LocalAppliance, clerks: dict[str, Api]
) -> None:
    """The control for the test above: with the token the console gave, and
    the headers a browser sends, the same forms pass the CSRF check (and
    stop at the empty fields, changing nothing)."""
    browser_headers = {"Sec-Fetch-Site": "same-origin", "Origin": appliance.url}
    for role in ROLES:
        client = client_for(appliance, clerks[role])
        r = client.post("/account/password", [(security.CSRF_FIELD, client.csrf())],
                        headers=browser_headers)
        assert r.status == 422, (role, r)
        assert "3つの欄をすべて入力してください。" in r.text
    anon = client_for(appliance, None, source=fresh_address())
    # A browser that sends only Origin (no Sec-Fetch-Site) is judged by it.
    for headers in (browser_headers, {"Origin": appliance.url}):
        r = anon.post("/login", [(security.CSRF_FIELD, anon.csrf()), ("username", "")],
                      headers=headers)
        assert r.status == 422, r
        assert "ユーザー名とパスワードを入力してください。" in r.text


def test_the_csrf_token_is_bound_to_the_session(
    appliance: LocalAppliance, clerks: dict[str, Api]
) -> None:
    """A token copied from one user's page does not work in another's."""
    mu = client_for(appliance, clerks["MU"])
    ma = client_for(appliance, clerks["MA"])
    r = ma.post("/account/password", [(security.CSRF_FIELD, mu.csrf())])
    assert r.status == 403 and CSRF_JA in r.text, r
    # Nor does the pre-session token of the sign-in page once signed in.
    anon = client_for(appliance, None)
    r = ma.post("/account/password", [(security.CSRF_FIELD, anon.csrf())])
    assert r.status == 403 and CSRF_JA in r.text, r


# --- headers and the pages' markup ------------------------------------------------------


class InlineFinder(HTMLParser):
    """Collects what the CSP forbids in markup: inline script, inline style,
    event handler attributes and javascript: URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in: str | None = None
        self._src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "style":
                self.problems.append(f"<{tag} style=…>")
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=…>")
            if name in ("href", "src", "action", "formaction") and (value or "").strip(
            ).lower().startswith("javascript:"):
                self.problems.append(f"<{tag} {name}=javascript:…>")
        if tag in ("script", "style"):
            self._in = tag
            self._src = tag == "script" and any(n == "src" for n, _ in attrs)
            if tag == "script" and not self._src:
                self.problems.append("<script> without src")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and data.strip():
            self.problems.append(f"inline <{self._in}> content")


def inline_problems(html: str) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    finder.close()
    return finder.problems


def header_problems(r: Reply) -> list[str]:
    problems = []
    csp = r.header("Content-Security-Policy") or ""
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";") if d.strip()}
    if directives.get("script-src") != "script-src 'self'":
        problems.append(f"script-src: {directives.get('script-src')!r}")
    if directives.get("style-src") != "style-src 'self'":
        problems.append(f"style-src: {directives.get('style-src')!r}")
    if directives.get("frame-ancestors") != "frame-ancestors 'none'":
        problems.append("frame-ancestors")
    if "unsafe-inline" in csp or "unsafe-eval" in csp:
        problems.append("unsafe-inline/eval in the CSP")
    hsts = re.fullmatch(r"max-age=(\d+).*", r.header("Strict-Transport-Security") or "")
    if not hsts or int(hsts.group(1)) < 180 * 86400:
        problems.append(f"HSTS: {r.header('Strict-Transport-Security')!r}")
    expected = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store"}
    for name, value in expected.items():
        if r.header(name) != value:
            problems.append(f"{name}: {r.header(name)!r}")
    return problems


def test_every_page_has_the_security_headers_and_no_inline_script(
    appliance: LocalAppliance, page_routes: list[PageRoute], clerks: dict[str, Api],
    path_values: dict[str, str],
) -> None:
    failures: list[str] = []
    scanned = 0
    gets = [r for r in page_routes if r.method == "GET"]
    for who in (ANON, *ROLES):
        client = visitor_for(appliance, clerks, who, source=fresh_address())
        for route in gets:
            path = route.path(path_values)
            r = client.get(path)
            where = f"GET {path} as {who} ({r.status})"
            failures += [f"{where}: {p}" for p in header_problems(r)]
            assert r.status < 500, (where, r)
            if r.status == 200 and r.is_html:
                scanned += 1
                failures += [f"{where}: {p}" for p in inline_problems(r.text)]
        # The refusals and redirects carry them too.
        for path in ("/no-such-page", "/subjects/not-an-id"):
            failures += [f"GET {path} as {who}: {p}" for p in header_problems(client.get(path))]
        r = client.post("/login", [("username", "x")], headers={"Sec-Fetch-Site": "cross-site"})
        failures += [f"forged POST as {who}: {p}" for p in header_problems(r)]
    assert not failures, "\n".join(failures)
    # Every role opened its home page and more; anonymous the sign-in page.
    assert scanned >= len(ROLES) * 3 + 1


INLINE_IN_TEMPLATES = re.compile(
    r"\sstyle\s*=|<style|\son[a-z]+\s*=|javascript:|<script(?![^>]*\ssrc=)", re.IGNORECASE
)


def test_no_template_has_inline_script_or_style() -> None:
    """The pages above are those a visit reaches; some templates render only
    in states a visit does not set up (a handout, a finished import), so
    every template is read as well."""
    templates = Path(__file__).resolve().parents[2] / "webui" / "templates"
    found = [
        f"{path.relative_to(templates)}:{n}: {line.strip()[:80]}"
        for path in sorted(templates.rglob("*.html"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if INLINE_IN_TEMPLATES.search(line)
    ]
    assert len(list(templates.rglob("*.html"))) > 10
    assert not found, "\n".join(found)


def test_the_stylesheets_and_scripts_are_files(appliance: LocalAppliance) -> None:
    """What the pages load instead of inline code: served from /static with
    the right type, and the pages' headers still hold."""
    client = client_for(appliance, None)
    page = client.get("/login").text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        r = client.get(asset)
        assert r.status == 200, asset
        kind = "javascript" if asset.endswith(".js") else "css"
        assert kind in (r.header("Content-Type") or ""), asset
        assert r.header("X-Content-Type-Options") == "nosniff"


# --- sign-in rate limit ---------------------------------------------------------------------


def test_sign_in_is_rate_limited_per_address(
    appliance: LocalAppliance, admin: Api
) -> None:
    password = propose_and_approve(admin, "websec-rate", "MU")
    limit = security.RateLimiter().limit
    here = client_for(appliance, None, source=fresh_address())

    def attempt(client: WebClient, secret: str) -> Reply:
        return client.post("/login", [(security.CSRF_FIELD, client.csrf()),
                                      ("username", "websec-rate"), ("password", secret)])

    for n in range(limit):
        # Wrong passwords go to an account that does not exist (the vault's
        # own lockout must not be what stops the right password below).
        r = attempt(here, "") if n % 2 else here.post(
            "/login", [(security.CSRF_FIELD, here.csrf()), ("username", "websec-nobody"),
                       ("password", f"wrong-password-{n}")])
        assert r.status in (401, 422), (n, r)
    # Over the limit, even the right password is refused, with a clear answer.
    r = attempt(here, password)
    assert r.status == 429, r
    assert 1 <= int(r.header("Retry-After") or "0") <= 60
    assert RATE_JA in r.text and '<html lang="ja">' in r.text
    assert security.SESSION_COOKIE not in here.cookies
    here.cookies[security.LANG_COOKIE] = "en"
    r = attempt(here, password)
    assert r.status == 429 and RATE_EN in r.text and '<html lang="en">' in r.text, r
    assert security.SESSION_COOKIE not in here.cookies
    # Another address is not held back by this one's attempts.
    elsewhere = client_for(appliance, None, source=fresh_address())
    r = attempt(elsewhere, password)
    assert r.status == 303 and r.location == "/account/totp", r
    assert security.SESSION_COOKIE in elsewhere.cookies


# --- error pages ------------------------------------------------------------------------------


def assert_error_page(r: Reply, status: int, message: str, lang: str) -> None:
    assert r.status == status, r
    assert r.is_html, r.header("Content-Type")
    assert f'<html lang="{lang}">' in r.text
    assert message in r.text, r
    assert not INTERNALS.search(r.text), INTERNALS.search(r.text)
    assert not header_problems(r)


def test_error_pages_speak_the_visitors_language_without_internals(
    appliance: LocalAppliance, clerks: dict[str, Api], admin: Api
) -> None:
    limit = kura_config.load(appliance.config_path).console.max_import_bytes
    for lang, texts in (("ja", (NOT_FOUND_JA, NOT_ALLOWED_JA, TOO_LARGE_JA, CSRF_JA)),
                        ("en", (NOT_FOUND_EN, NOT_ALLOWED_EN, TOO_LARGE_EN, CSRF_EN))):
        anon = client_for(appliance, None, source=fresh_address(),
                          lang="" if lang == "ja" else lang)
        not_found, not_allowed, too_large, csrf = texts
        assert_error_page(anon.get("/no-such-page"), 404, not_found, lang)
        r = anon.post("/account", [(security.CSRF_FIELD, anon.csrf())])
        assert_error_page(r, 405, not_allowed, lang)
        assert "GET" in (r.header("Allow") or "")
        # A body over the console's cap (the largest it takes: a CSV import).
        big = b"username=x&password=" + b"A" * (limit + 1024)
        r = anon.request("POST", "/login", body=big,
                         content_type="application/x-www-form-urlencoded")
        assert_error_page(r, 413, too_large, lang)
        r = anon.post("/login", [(security.CSRF_FIELD, forged_token(anon)), ("username", "x")])
        assert_error_page(r, 403, csrf, lang)
        # Malformed forms are the sender's fault: a 400 page, not an internal error.
        for ctype, body in (("multipart/form-data", b"x"),
                            ("multipart/form-data; boundary=zz",
                             b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n")):
            r = anon.request("POST", "/login", body=body, content_type=ctype)
            assert r.status == 400, r
            assert not INTERNALS.search(r.text)
    # A role asking for another's page: 403, in the user's own language.
    mu = client_for(appliance, clerks["MU"])
    assert_error_page(mu.get("/admin/users"), 403, DENIED_JA, "ja")
    english = provision(admin, "websec-mu-en", "MU")
    en = client_for(appliance, english)
    r = en.post("/language", [(security.CSRF_FIELD, en.csrf()), ("language", "en"),
                              ("next", "/")])
    assert r.status == 303, r
    assert_error_page(en.get("/admin/users"), 403, DENIED_EN, "en")
    assert_error_page(en.get("/no-such-page"), 404, NOT_FOUND_EN, "en")


# --- no number in a URL, a title, the history or a log -------------------------------------


def number_forms(number: str) -> tuple[str, str, str]:
    return number, hyphenated(number), f"{number[:4]} {number[4:8]} {number[8:]}"


def test_no_number_in_a_url_or_the_history(
    appliance: LocalAppliance, page_routes: list[PageRoute], clerks: dict[str, Api],
    registered: Registered, new_context: Callable[..., BrowserContext],
    shot: Callable[[Page, str], object],
) -> None:
    keys = {r.key for r in page_routes}
    needed = {("POST", "/search"), ("GET", "/subjects/{id}"), ("POST", "/subjects/{id}/reveal")}
    if not needed <= keys:
        pytest.skip(f"the use pages are not routed yet: {sorted(needed - keys)}")
    mu = clerks["MU"]
    number, sid = registered.register(mu)
    fresh = mu.sign_in(mu.username, mu.password, mu.totp_secret)  # the browser's own session
    context = new_context()
    context.add_cookies([session_cookie(appliance.url, fresh.token or "")])  # type: ignore[list-item]
    seen: list[str] = []
    context.on("request", lambda request: seen.append(request.url))
    page = context.new_page()
    page.on("framenavigated", lambda frame: seen.append(frame.url))
    titles: list[str] = []

    def step() -> None:
        titles.append(page.title())
        assert not any(form in page.url for form in number_forms(number)), page.url

    page.goto(appliance.url + "/search")
    step()
    for typed in (number, hyphenated(number)):
        page.fill("#query", typed)
        page.click("#search-button")
        expect(page.locator(f'tr[data-subject-id="{sid}"]')).to_be_visible()
        step()
        # Nor is it written back into the form.
        assert page.input_value("#query") == ""
    shot(page, "search-by-number")
    page.click(f'tr[data-subject-id="{sid}"] a')
    expect(page).to_have_url(appliance.url + f"/subjects/{sid}")
    step()
    page.click("#reveal-button")
    expect(page.locator("#revealed-number")).to_have_text(hyphenated(number))
    step()
    shot(page, "revealed")
    page.go_back()
    step()
    page.reload()  # the browser asks before posting again; either way no number in the URL
    step()
    history = "\n".join(seen)
    assert seen and not any(form in history for form in number_forms(number))
    assert not any(looks_like_my_number(title) for title in titles), titles


def test_idle_session_ends_with_a_notice(
    appliance: LocalAppliance, clerks: dict[str, Api], users: dict[str, Api],
    new_context: Callable[..., BrowserContext], shot: Callable[[Page, str], object],
) -> None:
    """The SA sets a one-minute idle time; a minute without a request ends
    the session in the vault, the page's own timer sends the browser to the
    sign-in page, and the user is told why. (About 65 s: the policy's
    shortest idle time is a minute, and the vault counts real time.)"""
    # The shared SA and MA may have idled out while other modules ran; both
    # must be signed in to put the policy back (the MA approves the weakening).
    sa = signed_in(users["SA"])
    signed_in(users["MA"])
    before = sa.get("/policy")
    assert before.status == 200, before.body[:300]
    original = before.json["policy"]["session_idle_minutes"]
    try:
        changed = sa.put("/policy", {"policy": {"session_idle_minutes": 1}})
        assert changed.status == 200, changed.body[:300]
        # Two clerks the module has not signed in again yet: another sign-in of
        # the same one within 30 s would wait for the next TOTP step (every
        # role has a second factor).
        ma, da = clerks["MA"], clerks["DA"]
        in_browser = ma.sign_in(ma.username, ma.password, ma.totp_secret)
        direct = client_for(appliance, da.sign_in(da.username, da.password, da.totp_secret))
        context = new_context()
        context.add_cookies([session_cookie(appliance.url, in_browser.token or "")])  # type: ignore[list-item]
        page = context.new_page()
        page.clock.install()  # the page's timer runs on a clock the test can move
        page.goto(appliance.url + "/")
        expect(page.locator("body")).to_have_attribute("data-idle-minutes", "1")
        r = direct.get("/")
        assert r.status == 200 and 'data-idle-minutes="1"' in r.text, r
        idle_from = time.monotonic()
        while time.monotonic() - idle_from < 62:
            # The SA must outlive the minute to put the policy back, and the
            # MA to approve it (a longer idle time is a weakening).
            assert sa.get("/session").status == 200
            assert users["MA"].get("/session").status == 200
            assert clerks["SA"].get("/session").status == 200
            time.sleep(min(15.0, max(0.0, 62 - (time.monotonic() - idle_from))))
        # A request on the idle session: the vault has ended it.
        r = direct.get("/account")
        assert r.status == 303 and r.location.startswith("/login?expired=1"), r
        assert security.SESSION_COOKIE not in direct.cookies
        notice = direct.get(r.location)
        assert notice.status == 200 and EXPIRED_JA in notice.text, notice
        # The open page's timer notices the idle minute by itself.
        page.clock.fast_forward("02:00")
        expect(page).to_have_url(re.compile(r"/login\?expired=1$"))
        expect(page.locator(".notice")).to_have_text(EXPIRED_JA)
        shot(page, "idle-expired")
        page.goto(appliance.url + "/")
        expect(page).to_have_url(re.compile(r"/login"))
    finally:
        # The MA approves where the appliance has one SA; this module's own SA
        # (a second one) where it has two.
        set_policy(sa, {"session_idle_minutes": original}, users["MA"], clerks["SA"])
    assert sa.get("/policy").json["policy"]["session_idle_minutes"] == original


# --- the page role matrix --------------------------------------------------------------------


def test_every_route_is_decided(page_routes: list[PageRoute]) -> None:
    """A new page must be added to EXPECTED (from DESIGN.md) deliberately."""
    undecided = sorted({r.key for r in page_routes} - set(EXPECTED) - PENDING_REVIEW)
    assert not undecided, f"routes missing from EXPECTED: {undecided}"
    unguarded = sorted(r.key for r in page_routes if not r.declared)
    assert not unguarded, f"routes not declared with @page: {unguarded}"
    for page_path in [item.path for item in MENU] + list(NAMED_PAGES):
        assert ("GET", page_path) in EXPECTED, page_path


def test_declared_roles_match_design(page_routes: list[PageRoute]) -> None:
    """What each handler declares with @page agrees with EXPECTED (the
    direct requests below check the behaviour; this names the culprit)."""
    wrong = []
    for route in page_routes:
        expected = EXPECTED.get(route.key)
        if expected is None:
            continue
        declared = frozenset(route.users())
        if declared != expected:
            wrong.append(f"{route.key}: declared {sorted(declared)}, DESIGN {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]} {k[1]}")
def test_page_role_matrix(
    key: RouteKey, appliance: LocalAppliance, page_routes: list[PageRoute],
    clerks: dict[str, Api], path_values: dict[str, str],
) -> None:
    method, pattern = key
    route = next((r for r in page_routes if r.key == key), None)
    if route is None:
        pytest.skip(f"{method} {pattern} is not routed yet")
    allowed = EXPECTED[key]
    path = route.path(path_values)
    for who in (ANON, *ROLES):
        client = visitor_for(appliance, clerks, who, source=fresh_address())
        if method == "GET":
            r = client.get(path)
        elif who in allowed:
            continue  # an allowed POST would act; the CSRF tests cover these
        else:
            r = client.post(path, [(security.CSRF_FIELD, client.csrf())])
        where = f"{method} {path} as {who}"
        if who in allowed:
            assert r.status < 500 and r.status != 403, (where, r)
            if r.status == 303:  # only these send the visitor home when all is well
                assert pattern in ("/login", "/sealed", "/unseal", "/audit-integrity"), (where, r)
            elif "{" not in pattern or pattern == "/subjects/{id}":
                assert r.status == 200, (where, r)
            else:  # made-up ids: the page exists and says so, or the record does not
                assert r.status in (200, 404, 410), (where, r)
        elif who == ANON:
            assert r.status == 303 and r.location.startswith("/login"), (where, r)
        else:
            assert r.status == 403, (where, r)
            assert DENIED_JA in r.text and '<html lang="ja">' in r.text, (where, r)


# --- logs --------------------------------------------------------------------------------------


def test_no_number_in_the_logs(
    appliance: LocalAppliance, clerks: dict[str, Api], registered: Registered
) -> None:
    """Last in the module: every number registered above (and one more, now
    searched and pasted into the address bar) is in neither the console's
    access log nor the vault's log."""
    mu = clerks["MU"]
    number, _ = registered.register(mu)
    assert mu.post("/subjects/lookup", {"number": number}).status == 200
    client = client_for(appliance, mu)
    for path in (f"/subjects/{number}", f"/search/{hyphenated(number)}", f"/{number}"):
        assert client.get(path).status == 404
    client.post("/search", [(security.CSRF_FIELD, client.csrf()), ("query", number)])
    time.sleep(0.5)  # the access log line is written after the answer
    logs = {name: (appliance.logs / name).read_text(errors="replace")
            for name in ("console.log", "vault.log")}
    assert "GET /" in logs["console.log"], "the access log is not where it should be"
    assert "withheld" in logs["console.log"], "the pasted number's request was not logged"
    assert len(registered.by_number) >= 2
    for name, text in logs.items():
        for known in registered.by_number:
            assert not any(form in text for form in number_forms(known)), name
        suspicious = [line[:120] for line in text.splitlines() if looks_like_my_number(line)]
        assert not suspicious, (name, suspicious[:5])

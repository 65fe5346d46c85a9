"""What the tests share: a small synchronous HTTPS client for the JSON API
(stdlib only, verifying the appliance's own certificate), generated My
Numbers with valid check digits, and signing in the way a user does."""

from __future__ import annotations

import http.client
import json
import random
import secrets
import ssl
import struct
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import pyotp

from kura.core.numbers import corporate_check_digit, my_number_check_digit
from kura.devserver import LocalAppliance


def my_number(rng: random.Random) -> str:
    """A random My Number with a valid check digit (never a real person's:
    the tests only need the arithmetic to hold)."""
    while True:
        first = "".join(rng.choice("0123456789") for _ in range(11))
        number = first + str(my_number_check_digit(first))
        if number != "0" * 12:
            return number


def my_numbers(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        seen.add(my_number(rng))
    return sorted(seen, key=lambda _: rng.random())


def wrong_check_digit(number: str) -> str:
    return number[:11] + str((int(number[11]) + 1) % 10)


def corporate_number(rng: random.Random) -> str:
    rest = "".join(rng.choice("0123456789") for _ in range(12))
    return str(corporate_check_digit(rest)) + rest


def hyphenated(number: str) -> str:
    return f"{number[:4]}-{number[4:8]}-{number[8:]}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            return str(self.json["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class Api:
    base: str  # https://127.0.0.1:PORT
    cafile: Path
    token: str | None = None
    username: str = ""
    password: str = ""
    totp_secret: str = ""
    role: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)
    # False for an appliance reached through a forwarded port: its certificate
    # names the appliance, not 127.0.0.1; the caller pins the certificate instead.
    check_hostname: bool = True
    # Seconds a request may take; a client of the HA pair gives up much sooner.
    timeout: ClassVar[float] = 120.0

    def _connection(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.cafile))
        context.check_hostname = self.check_hostname
        parts = urlsplit(self.base)
        assert parts.hostname and parts.port
        return http.client.HTTPSConnection(parts.hostname, parts.port, context=context,
                                           timeout=self.timeout)

    def request(
        self, method: str, path: str, json_body: Any = None, *, body: bytes | None = None,
        content_type: str | None = None, query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None, token: str | None = None,
    ) -> Response:
        url = "/api/v1" + path + ("?" + urlencode(query) if query else "")
        send_headers = dict(self.extra_headers)
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False).encode()
            content_type = content_type or "application/json"
        if content_type:
            send_headers["Content-Type"] = content_type
        bearer = token if token is not None else self.token
        if bearer:
            send_headers["Authorization"] = f"Bearer {bearer}"
        send_headers.update(headers or {})
        conn = self._connection()
        try:
            conn.request(method, url, body=body, headers=send_headers)
            raw = conn.getresponse()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        finally:
            conn.close()

    def page(self, path: str) -> Response:
        """GET a page of the web console (outside /api/v1), without a session."""
        conn = self._connection()
        try:
            conn.request("GET", path, headers=dict(self.extra_headers))
            raw = conn.getresponse()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, json_body, **kw)

    def put(self, path: str, json_body: Any = None, **kw: Any) -> Response:
        return self.request("PUT", path, json_body, **kw)

    def patch(self, path: str, json_body: Any = None, **kw: Any) -> Response:
        return self.request("PATCH", path, json_body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def anonymous(self) -> Api:
        return Api(self.base, self.cafile, check_hostname=self.check_hostname)

    def totp_code(self) -> str:
        return fresh_totp(self.totp_secret)

    def sign_in(self, username: str, password: str, totp_secret: str = "") -> Api:
        """A new client signed in as ``username``; raises if sign-in fails."""
        body: dict[str, Any] = {"username": username, "password": password}
        if totp_secret:
            body["totp"] = fresh_totp(totp_secret)
        r = self.anonymous().post("/session", body)
        assert r.status == 200, (r.status, r.body[:300])
        return Api(self.base, self.cafile, r.json["token"], username, password, totp_secret,
                   r.json["role"], check_hostname=self.check_hostname)


_TOTP_USED: dict[str, int] = {}


def fresh_totp(secret: str) -> str:
    """A TOTP code the vault has not seen yet for ``secret``. A code is good
    once (no replay), and the vault accepts the next step too, so a second
    sign-in in the same 30 s uses the next step's code (or waits for it)."""
    totp = pyotp.TOTP(secret)
    now_step = totp.timecode(datetime.now(UTC))
    step = max(now_step, _TOTP_USED.get(secret, -1) + 1)
    while step > totp.timecode(datetime.now(UTC)) + 1:
        time.sleep(0.5)
    _TOTP_USED[secret] = step
    return totp.generate_otp(step)


NEW_PASSWORD_SUFFIX = "-Kura!2026"


def activate(api: Api, first_password: str) -> Api:
    """Do what a new user does at first sign-in: change the one-time password,
    then enrol TOTP if the policy asks for it. Returns a fully usable client."""
    new_password = "Changed-" + first_password[:10] + NEW_PASSWORD_SUFFIX
    r = api.post("/session/password", {"current_password": first_password,
                                        "new_password": new_password})
    assert r.status == 200, (r.status, r.body[:300])
    api.password = new_password
    if r.json["mfa_setup_required"]:
        enrol_totp(api)
    return api


def enrol_totp(api: Api) -> Api:
    """Enrol a TOTP second factor for a session that must (or may) set one up."""
    begin = api.post("/session/totp")
    assert begin.status == 200, begin.body
    api.totp_secret = begin.json["secret"]
    confirm = api.post("/session/totp/confirm", {"code": api.totp_code()})
    assert confirm.status == 200, confirm.body
    assert not confirm.json["mfa_setup_required"]
    return api


# An SA or MA client per appliance (by URL) that approves the DA's account
# proposals for provision(): the first SA it makes, or one a test registers.
_APPROVERS: dict[str, Api] = {}
FIRST_SA = "sa-first"


def remember_approver(api: Api) -> Api:
    _APPROVERS[api.base] = api
    return api


def holder_password(username: str) -> str:
    return "Held-" + secrets.token_hex(5) + NEW_PASSWORD_SUFFIX


def activate_account(anon: Api, username: str, half_a: str, half_b: str,
                     password: str | None = None) -> str:
    """What the holder does on the activation page; returns their password."""
    password = password or holder_password(username)
    r = anon.anonymous().post("/activation", {"username": username, "half_a": half_a,
                                              "half_b": half_b, "new_password": password})
    assert r.status == 200, (r.status, r.body[:300])
    return password


def approve(approver: Api, proposal: str) -> Response:
    """Approve as ``approver``, signing it in again if its session ran out."""
    r = approver.post(f"/users/proposals/{proposal}/approve")
    if r.status == 401 and approver.password:
        again = approver.sign_in(approver.username, approver.password, approver.totp_secret)
        approver.token = again.token
        r = approver.post(f"/users/proposals/{proposal}/approve")
    return r


def approver_for(admin: Api, target: str) -> Api:
    """An SA (or MA) of ``admin``'s appliance who is not ``target``; makes the
    appliance's first SA (the DA alone may) when there is none yet."""
    known = _APPROVERS.get(admin.base)
    if known is not None and known.username != target:
        return known
    if known is None:
        return remember_approver(provision(admin, FIRST_SA, "SA"))
    raise AssertionError(f"no approver for {target}: register one with remember_approver()")


def propose_and_approve(admin: Api, username: str, role: str,
                        approver: Api | None = None) -> str:
    """As the DA, create an MU/MA/SA account and have it approved (or, for
    the first SA, made by the DA alone); the holder activates it. Returns the
    holder's password (no second factor enrolled yet)."""
    r = admin.post("/users", {"username": username, "role": role})
    assert r.status == 200, (r.status, r.body[:300])
    created = r.json
    if created["state"] == "pending":
        approver = approver or approver_for(admin, username)
        decided = approve(approver, created["proposal"])
        assert decided.status == 200, (decided.status, decided.body[:300])
        half_b = decided.json["half_b"]
    else:
        half_b = created["half_b"]
    return activate_account(admin, username, created["half_a"], half_b)


def first_da(app: LocalAppliance, username: str = "admin") -> Api:
    """The appliance's first DA, made as the first-boot wizard does, with its
    own password and TOTP: what every test appliance starts from."""
    password = app.bootstrap_da(username)
    assert password
    return activate(Api(app.url, app.cert).sign_in(username, password), password)


def provision(admin: Api, username: str, role: str) -> Api:
    """Create an account as a DA and bring it to a usable session: for MU, MA
    and SA through a second person's approval and the holder's activation
    with both halves of the code (see propose_and_approve)."""
    if role == "DA":
        r = admin.post("/users", {"username": username, "role": role})
        assert r.status == 200, (r.status, r.body[:300])
        fresh = admin.sign_in(username, r.json["password"])
        return activate(fresh, r.json["password"])
    password = propose_and_approve(admin, username, role)
    holder = admin.sign_in(username, password)
    holder = enrol_totp(holder)
    if role == "SA":
        stand_in = _APPROVERS.get(admin.base)
        if stand_in is None:
            remember_approver(holder)
        elif stand_in.username == FIRST_SA:
            # The test asked for an MU or MA before its SA, so provision made
            # a stand-in first SA to approve them. Now that the test's own SA
            # exists it takes over, and the stand-in is disabled: the
            # appliance keeps one active SA, as the tests that have an MA
            # approve an SA's weakening of the policy expect.
            r = admin.patch(f"/users/{FIRST_SA}", {"disabled": True})
            assert r.status == 200, (r.status, r.body[:300])
            remember_approver(holder)
    return holder


def signed_in(api: Api) -> Api:
    """``api`` with a live session: signed in again (the same object) if its
    session idled out while other modules ran."""
    if api.get("/session").status == 401 and api.password:
        again = api.sign_in(api.username, api.password, api.totp_secret)
        api.token = again.token
    return api


def keep_one_sa(da: Api, keep: str) -> None:
    """Disable every active SA but ``keep`` (a DA may disable alone): where the
    appliance has one SA, its MA is the second person for a weakening of the
    policy, which the tests on the shared appliance rely on."""
    da = signed_in(da)
    r = da.get("/users")
    assert r.status == 200, (r.status, r.body[:300])
    for user in r.json["users"]:
        if user["role"] == "SA" and not user["disabled"] and user["username"] != keep:
            done = da.patch(f"/users/{user['username']}", {"disabled": True})
            assert done.status == 200, (done.status, done.body[:300])


def png(width: int = 48, height: int = 32, rgb: tuple[int, int, int] = (30, 80, 160)) -> bytes:
    """A real PNG of one colour (browsers show it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )

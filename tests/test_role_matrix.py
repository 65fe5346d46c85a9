"""The role matrix: every API operation × every role, expected allow or deny,
and each denial audited.

``EXPECTED`` is written here from DESIGN.md's role table, not read from
kura.core.roles, so the vault's rules are checked against the product's
word rather than against themselves:

- MU registers payees, searches, reveals a number for a purpose, exports for
  forms and bulk-imports;
- MA approves and corrects records (PATCH /subjects/{id}) and searches,
  lists and reads them (masked);
- SA reads and sets the security policy and reads and exports the audit log;
- DA manages user accounts and rotates keys;
- SA and DA never see subject data.

Each cell sends a valid request as a signed-in user of that role. An allowed
cell must succeed; a denied cell must get 403 ``permission_denied``, change
nothing a user could see, and leave a ``denied`` entry in the audit log.
A route missing from ``EXPECTED`` fails the suite."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kura.console.api import ROUTES
from tests import role_cases
from tests.support import Api, Response, my_number, propose_and_approve, provision

ROLES = ("MU", "MA", "SA", "DA")
EVERYONE = frozenset(ROLES)
MU, MA, SA, DA = (frozenset({r}) for r in ROLES)
MU_MA = frozenset({"MU", "MA"})

RouteKey = tuple[str, str]

# Routes that need no session at all (the rest answer 401 without one).
PUBLIC: frozenset[RouteKey] = frozenset(
    {("GET", "/status"), ("POST", "/unseal"), ("POST", "/session")}
)

# Who may call each route, from DESIGN.md's role table.
EXPECTED: dict[RouteKey, frozenset[str]] = {
    # the appliance and one's own session: anyone
    ("GET", "/status"): EVERYONE,
    ("POST", "/unseal"): EVERYONE,
    ("POST", "/session"): EVERYONE,
    ("GET", "/session"): EVERYONE,
    ("DELETE", "/session"): EVERYONE,
    ("POST", "/session/password"): EVERYONE,
    ("POST", "/session/totp"): EVERYONE,
    ("POST", "/session/totp/confirm"): EVERYONE,
    ("GET", "/purposes"): EVERYONE,
    # MU: register payees directly, search, reveal for a purpose, export, bulk import
    ("POST", "/payees"): MU,
    ("POST", "/subjects"): MU,
    ("POST", "/subjects/import"): MU,
    ("POST", "/subjects/{id}/reveal"): MU,
    ("POST", "/exports"): MU,
    # MU and MA: search, list and read records (numbers masked)
    ("GET", "/subjects"): MU_MA,
    ("POST", "/subjects/lookup"): MU_MA,
    ("GET", "/subjects/{id}"): MU_MA,
    # MA: correct records
    ("PATCH", "/subjects/{id}"): MA,
    # SA: security policy and the audit log
    ("GET", "/policy"): SA,
    ("PUT", "/policy"): SA,
    ("GET", "/audit"): SA,
    ("GET", "/audit/export"): SA,
    # DA: user accounts and keys
    ("GET", "/users"): DA,
    ("POST", "/users"): DA,
    ("PATCH", "/users/{username}"): DA,
    ("POST", "/users/{username}/password-reset"): DA,
    ("POST", "/keys/rotate"): DA,
}

OPERATION = {(r.method, r.path): r.op for r in ROUTES}  # the audit log's name for a route
CODE_PREFIX = "RM-"  # every subject this module registers has a code starting so
TRACEBACK = re.compile(r"Traceback|File \"|\.py\b|psycopg|asyncio")


@dataclass
class Case:
    """One request to send, as whom, and how to tell that nothing changed."""

    client: Api
    method: str
    path: str
    body: Any = None
    query: dict[str, Any] | None = None
    snapshot: Callable[[], object] = lambda: None
    cleanup: Callable[[Response], None] | None = None
    followup: Callable[[Response], None] | None = None  # more checks when allowed
    # When allowed, the status it must get: None is any 2xx; a route judged on
    # its merits after the role check (a switchover on a single appliance) names it.
    allowed_status: int | None = None

    def send(self) -> Response:
        return self.client.request(self.method, self.path, self.body, query=self.query)


@dataclass
class World:
    """The signed-in users, a few subjects to aim at, and ways to look at the
    appliance's state from the roles that may see it."""

    users: dict[str, Api]
    anon: Api
    rng: random.Random = field(default_factory=lambda: random.Random("role-matrix"))
    serial: itertools.count[int] = field(default_factory=itertools.count)
    numbers: set[str] = field(default_factory=set)
    subject: dict[str, Any] = field(default_factory=dict)  # read by all, never changed
    number: str = ""  # its My Number
    corrected: dict[str, Any] = field(default_factory=dict)  # the one PATCH aims at

    @property
    def mu(self) -> Api:
        return self.users["MU"]

    @property
    def sa(self) -> Api:
        return self.users["SA"]

    @property
    def da(self) -> Api:
        return self.users["DA"]

    def new_number(self) -> str:
        while True:
            number = my_number(self.rng)
            if number not in self.numbers:
                self.numbers.add(number)
                return number

    def unique(self, stem: str) -> str:
        return f"{stem}{next(self.serial)}"

    def client(self, role: str | None) -> Api:
        """The signed-in client of ``role`` (anonymous for None)."""
        return _as(self, role)

    def case(self, *args: Any, **kwargs: Any) -> Case:
        return Case(*args, **kwargs)

    def register(self, name: str) -> tuple[dict[str, Any], str]:
        number = self.new_number()
        r = self.mu.post("/payees", {"code": self.unique(CODE_PREFIX + "S"), "name": name,
                                     "number": number})
        assert r.status == 201, r.body
        return r.json["subject"], number

    # --- accounts made for one cell --------------------------------------------

    def create_user(self, role: str) -> tuple[str, str]:
        """A new account and its first password: a DA's one-time password, or
        for MU, MA and SA the password its holder set on activation (after
        the SA's approval), with no second factor enrolled yet."""
        username = self.unique(f"rm-{role.lower()}-")
        if role != "DA":
            return username, propose_and_approve(self.da, username, role, approver=self.sa)
        r = self.da.post("/users", {"username": username, "role": role})
        assert r.status == 200, r.body
        return username, str(r.json["password"])

    def proposals(self) -> Any:
        r = self.da.get("/users/proposals")
        assert r.status == 200, r.body
        return r.json["proposals"]

    def first_sign_in(self, role: str) -> tuple[Api, str]:
        """A new account of ``role``, signed in with its first password."""
        username, password = self.create_user(role)
        return self.anon.sign_in(username, password), password

    def fully_active(self, role: str) -> Api:
        return provision(self.da, self.unique(f"rm-{role.lower()}-"), role)

    def one_sa(self) -> None:
        """Disable the SA accounts this module made for its cells, so that the
        shared SA is the appliance's only active one again: then the MA is the
        second person for a weakening of the policy (and the next modules on
        the shared appliance find it so)."""
        for user in self.user_list():
            if user["role"] == "SA" and not user["disabled"] and user["username"].startswith(
                    "rm-"):
                r = self.da.patch(f"/users/{user['username']}", {"disabled": True})
                assert r.status == 200, r.body

    def approve_policy(self, change_id: str) -> None:
        """The MA approves a waiting weakening of the policy."""
        self.one_sa()
        r = self.users["MA"].post(f"/policy/changes/{change_id}/approve", {})
        assert r.status == 200, r.body

    # --- what the roles that may look can see ----------------------------------

    def subject_codes(self) -> set[str]:
        r = self.mu.get("/subjects", query={"query": CODE_PREFIX, "limit": 500})
        assert r.status == 200, r.body
        return {s["code"] for s in r.json["subjects"]}

    def subject_as_seen(self, subject_id: str) -> Any:
        r = self.mu.get(f"/subjects/{subject_id}")
        assert r.status == 200, r.body
        return r.json

    def policy(self) -> Any:
        r = self.sa.get("/policy")
        assert r.status == 200, r.body
        return r.json["policy"]

    def user_list(self) -> Any:
        r = self.da.get("/users")
        assert r.status == 200, r.body
        return r.json["users"]

    def audit(self, actor: str, action: str) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"action": action, "limit": 500}
        if actor:
            query["actor"] = actor
        r = self.sa.get("/audit", query=query)
        assert r.status == 200, r.body
        return [e for e in r.json["entries"] if e["action"] == action]


@pytest.fixture(scope="module")
def world(users: dict[str, Api], anon: Api) -> Iterator[World]:
    w = World(users=users, anon=anon)
    w.subject, w.number = w.register("行列 太郎")
    w.corrected, _ = w.register("訂正 前子")
    yield w
    w.one_sa()


# --- one builder per route: a valid request for the role ----------------------
# ``role`` is None for the unauthenticated variant: the same request without a
# session, and without making accounts just for it.


def _as(world: World, role: str | None) -> Api:
    return world.users[role] if role else world.anon


def status(world: World, role: str | None) -> Case:
    return Case(_as(world, role), "GET", "/status")


def unseal(world: World, role: str | None) -> Case:
    # The vault is already open: a share is not needed and the status comes back.
    return Case(_as(world, role), "POST", "/unseal", {"share": "not needed while unsealed"})


def sign_in(world: World, role: str | None) -> Case:
    username, password = world.create_user(role or "MU")
    return Case(_as(world, role), "POST", "/session",
                {"username": username, "password": password})


def whoami(world: World, role: str | None) -> Case:
    client = _as(world, role)

    def same_user(r: Response) -> None:
        assert r.json["username"] == client.username and r.json["role"] == role

    return Case(client, "GET", "/session", followup=same_user)


def sign_out(world: World, role: str | None) -> Case:
    # Signing out ends the session: never the shared one.
    client = world.fully_active(role) if role else world.anon

    def session_is_gone(r: Response) -> None:
        after = client.get("/session")
        assert after.status == 401 and after.error_code == "not_authenticated"

    return Case(client, "DELETE", "/session", followup=session_is_gone)


def change_password(world: World, role: str | None) -> Case:
    if role is None:
        return Case(world.anon, "POST", "/session/password",
                    {"current_password": "x" * 12, "new_password": "Kura-Matrix-2026!"})
    client, password = world.first_sign_in(role)
    new_password = "Matrix-" + password[:8] + "-Kura!2026"

    def new_password_works(r: Response) -> None:
        assert r.json["must_change_password"] is False
        world.anon.sign_in(client.username, new_password)

    return Case(client, "POST", "/session/password",
                {"current_password": password, "new_password": new_password},
                followup=new_password_works)


def totp_begin(world: World, role: str | None) -> Case:
    client = world.first_sign_in(role)[0] if role else world.anon

    def secret_given(r: Response) -> None:
        assert r.json["secret"] and r.json["uri"].startswith("otpauth://")

    return Case(client, "POST", "/session/totp", followup=secret_given)


def totp_confirm(world: World, role: str | None) -> Case:
    if role is None:
        return Case(world.anon, "POST", "/session/totp/confirm", {"code": "000000"})
    client, _ = world.first_sign_in(role)
    begin = client.post("/session/totp")
    assert begin.status == 200, begin.body
    client.totp_secret = begin.json["secret"]
    return Case(client, "POST", "/session/totp/confirm", {"code": client.totp_code()})


def purposes(world: World, role: str | None) -> Case:
    def catalogue(r: Response) -> None:
        assert "payment_record" in {p["code"] for p in r.json["purposes"]}

    return Case(_as(world, role), "GET", "/purposes", followup=catalogue)


def register_payee(world: World, role: str | None) -> Case:
    code = world.unique(CODE_PREFIX + "P")

    def registered(r: Response) -> None:
        assert code in world.subject_codes()

    return Case(_as(world, role), "POST", "/payees",
                {"code": code, "name": "支払 一郎", "number": world.new_number()},
                snapshot=world.subject_codes, followup=registered)


def register_subject(world: World, role: str | None) -> Case:
    code = world.unique(CODE_PREFIX + "E")

    def registered(r: Response) -> None:
        assert code in world.subject_codes()

    return Case(_as(world, role), "POST", "/subjects",
                {"kind": "payee", "code": code, "name": "登録 次郎",
                 "number": world.new_number()},
                snapshot=world.subject_codes, followup=registered)


def list_subjects(world: World, role: str | None) -> Case:
    def listed(r: Response) -> None:
        assert world.subject["id"] in {s["id"] for s in r.json["subjects"]}

    return Case(_as(world, role), "GET", "/subjects",
                query={"query": world.subject["code"]}, followup=listed)


def lookup(world: World, role: str | None) -> Case:
    def found(r: Response) -> None:
        assert [s["id"] for s in r.json["subjects"]] == [world.subject["id"]]

    return Case(_as(world, role), "POST", "/subjects/lookup", {"number": world.number},
                followup=found)


def bulk_import(world: World, role: str | None) -> Case:
    code = world.unique(CODE_PREFIX + "I")

    def imported(r: Response) -> None:
        assert r.json["created"] == 1 and code in world.subject_codes()

    return Case(_as(world, role), "POST", "/subjects/import",
                {"rows": [{"kind": "payee", "code": code, "name": "取込 三郎",
                           "number": world.new_number()}]},
                snapshot=world.subject_codes, followup=imported)


def get_subject(world: World, role: str | None) -> Case:
    return Case(_as(world, role), "GET", f"/subjects/{world.subject['id']}")


def correct(world: World, role: str | None) -> Case:
    subject_id = world.corrected["id"]
    name = f"訂正 {role or '匿名'}"

    def corrected(r: Response) -> None:
        assert world.subject_as_seen(subject_id)["subject"]["name"] == name

    return Case(_as(world, role), "PATCH", f"/subjects/{subject_id}", {"name": name},
                snapshot=lambda: world.subject_as_seen(subject_id), followup=corrected)


def reveal(world: World, role: str | None) -> Case:
    def revealed(r: Response) -> None:
        assert r.json["number"] == world.number

    return Case(_as(world, role), "POST", f"/subjects/{world.subject['id']}/reveal",
                {"purpose": "payment_record"}, followup=revealed)


def export(world: World, role: str | None) -> Case:
    def exported(r: Response) -> None:
        assert r.headers["x-kura-rows"] == "1"
        assert world.number in r.body.decode("cp932")

    return Case(_as(world, role), "POST", "/exports",
                {"purpose": "payment_record", "ids": [world.subject["id"]]},
                followup=exported)


def get_policy(world: World, role: str | None) -> Case:
    return Case(_as(world, role), "GET", "/policy")


def set_policy(world: World, role: str | None) -> Case:
    original = world.policy()
    changed = {**original, "min_length": original["min_length"] + 1}

    def took_effect(r: Response) -> None:
        assert r.json["policy"]["min_length"] == changed["min_length"]

    def put_back(r: Response) -> None:
        if r.status == 200:
            # A shorter minimum weakens the policy: the MA (the shared
            # appliance has one SA) approves putting it back.
            back = world.sa.put("/policy", {"policy": original})
            assert back.status == 200, back.body
            if back.json["pending"]:
                world.approve_policy(back.json["pending"]["id"])
        assert world.policy() == original

    return Case(_as(world, role), "PUT", "/policy", {"policy": changed},
                snapshot=world.policy, cleanup=put_back, followup=took_effect)


def list_audit(world: World, role: str | None) -> Case:
    return Case(_as(world, role), "GET", "/audit", query={"limit": 20})


def export_audit(world: World, role: str | None) -> Case:
    return Case(_as(world, role), "GET", "/audit/export")


def list_users(world: World, role: str | None) -> Case:
    return Case(_as(world, role), "GET", "/users")


def create_user(world: World, role: str | None) -> Case:
    username = world.unique("rm-new-")

    def proposed(r: Response) -> None:
        # An MU account is a proposal: listed as waiting, not yet an account.
        assert username in {p["username"] for p in world.proposals()}
        assert username not in {u["username"] for u in world.user_list()}

    def cancel(r: Response) -> None:
        if r.status == 200:
            world.da.post(f"/users/proposals/{r.json['proposal']}/cancel")

    return Case(_as(world, role), "POST", "/users", {"username": username, "role": "MU"},
                snapshot=lambda: (world.user_list(), world.proposals()), followup=proposed,
                cleanup=cancel)


def _target(world: World, role: str | None) -> tuple[str, Api | None]:
    """An account to aim an account change at, signed in so that we can tell
    whether its session survived."""
    if role is None:
        return "rm-nobody", None
    client, _ = world.first_sign_in("MU")
    return client.username, client


def _account_state(world: World, username: str, client: Api | None) -> object:
    row = next((u for u in world.user_list() if u["username"] == username), None)
    return row, client.get("/session").status if client else None


def update_user(world: World, role: str | None) -> Case:
    username, target = _target(world, role)

    def disabled(r: Response) -> None:
        assert target is not None and target.get("/session").status == 401

    return Case(_as(world, role), "PATCH", f"/users/{username}",
                {"display_name": "変更 済", "disabled": True},
                snapshot=lambda: _account_state(world, username, target), followup=disabled)


def reset_password(world: World, role: str | None) -> Case:
    username, target = _target(world, role)

    def proposed(r: Response) -> None:
        # An MU's reset waits for a second person: its session lives on till then.
        assert r.json["state"] == "pending" and r.json["half_a"]
        assert "password" not in r.json
        assert target is not None and target.get("/session").status == 200

    def cancel(r: Response) -> None:
        if r.status == 200:
            world.da.post(f"/users/proposals/{r.json['proposal']}/cancel")

    return Case(_as(world, role), "POST", f"/users/{username}/password-reset", {},
                snapshot=lambda: _account_state(world, username, target), followup=proposed,
                cleanup=cancel)


def rotate_keys(world: World, role: str | None) -> Case:
    def rotations() -> int:
        return sum(e["outcome"] == "ok" for e in world.audit("", "keys.rotate"))

    return Case(_as(world, role), "POST", "/keys/rotate", {}, snapshot=rotations)


BUILDERS: dict[RouteKey, Callable[[World, str | None], Case]] = {
    ("GET", "/status"): status,
    ("POST", "/unseal"): unseal,
    ("POST", "/session"): sign_in,
    ("GET", "/session"): whoami,
    ("DELETE", "/session"): sign_out,
    ("POST", "/session/password"): change_password,
    ("POST", "/session/totp"): totp_begin,
    ("POST", "/session/totp/confirm"): totp_confirm,
    ("GET", "/purposes"): purposes,
    ("POST", "/payees"): register_payee,
    ("POST", "/subjects"): register_subject,
    ("GET", "/subjects"): list_subjects,
    ("POST", "/subjects/lookup"): lookup,
    ("POST", "/subjects/import"): bulk_import,
    ("GET", "/subjects/{id}"): get_subject,
    ("PATCH", "/subjects/{id}"): correct,
    ("POST", "/subjects/{id}/reveal"): reveal,
    ("POST", "/exports"): export,
    ("GET", "/policy"): get_policy,
    ("PUT", "/policy"): set_policy,
    ("GET", "/audit"): list_audit,
    ("GET", "/audit/export"): export_audit,
    ("GET", "/users"): list_users,
    ("POST", "/users"): create_user,
    ("PATCH", "/users/{username}"): update_user,
    ("POST", "/users/{username}/password-reset"): reset_password,
    ("POST", "/keys/rotate"): rotate_keys,
}

for _area in role_cases.AREAS:
    EXPECTED.update(_area.EXPECTED)
    BUILDERS.update(_area.BUILDERS)
    PUBLIC = PUBLIC | getattr(_area, "PUBLIC", frozenset())


# --- the table covers the API ---------------------------------------------------


def test_every_route_has_an_expectation() -> None:
    routes = {(r.method, r.path) for r in ROUTES}
    assert routes - set(EXPECTED) == set(), "a route without an expected role set"
    assert set(EXPECTED) - routes == set(), "an expectation for a route that is gone"
    assert set(BUILDERS) == set(EXPECTED)


def test_public_routes_are_exactly_the_expected_ones() -> None:
    assert {(r.method, r.path) for r in ROUTES if r.public} == PUBLIC


def test_sa_and_da_are_refused_every_subject_route() -> None:
    # The table itself says what DESIGN.md says: SA and DA see no subject data.
    for (_, path), roles in EXPECTED.items():
        if path.startswith(("/subjects", "/payees", "/exports")):
            assert not roles & {"SA", "DA"}, path


# --- the matrix -------------------------------------------------------------------

CELLS = [(route, role) for route in EXPECTED for role in ROLES]


def _cell_id(cell: tuple[RouteKey, str]) -> str:
    (method, path), role = cell
    return f"{method} {path} as {role}"


def _refusal_is_clean(r: Response) -> None:
    text = r.body.decode()
    error = r.json["error"]
    assert set(r.json) == {"error"}, "a refusal carries nothing else"
    assert error["message"] and error["message_en"]
    assert not TRACEBACK.search(text)


@pytest.mark.parametrize(("route", "role"), CELLS, ids=[_cell_id(c) for c in CELLS])
def test_role_matrix(world: World, route: RouteKey, role: str) -> None:
    allowed = role in EXPECTED[route]
    op = OPERATION[route]
    client = world.users[role]
    denials_before = [e for e in world.audit(client.username, op) if e["outcome"] == "denied"]

    case = BUILDERS[route](world, role)
    before = case.snapshot()
    r = case.send()
    try:
        if allowed:
            if case.allowed_status is None:
                assert 200 <= r.status < 300, (r.status, r.body[:300])
            else:
                assert r.status == case.allowed_status, (r.status, r.body[:300])
            if case.followup:
                case.followup(r)
            if role in ("SA", "DA"):
                # SA and DA never see subject data, not even in the audit log.
                assert world.number not in r.body.decode("utf-8", "replace")
                assert world.subject["name"] not in r.body.decode("utf-8", "replace")
            return

        assert r.status == 403, (r.status, r.body[:300])
        assert r.error_code == "permission_denied"
        _refusal_is_clean(r)
        assert world.number not in r.body.decode()
        assert case.snapshot() == before, "a refused request changed something"

        entries = world.audit(client.username, op)
        assert [e for e in entries if e["outcome"] != "denied"] == [], (
            "a role that may not do this has done it"
        )
        denials = [e for e in entries if e["outcome"] == "denied"]
        assert len(denials) == len(denials_before) + 1, "the refusal was not audited"
        newest = max(denials, key=lambda e: e["seq"])
        assert newest["role"] == role
    finally:
        if case.cleanup:
            case.cleanup(r)


NON_PUBLIC = [route for route in EXPECTED if route not in PUBLIC]


@pytest.mark.parametrize("route", NON_PUBLIC, ids=[f"{m} {p}" for m, p in NON_PUBLIC])
def test_without_a_session_every_non_public_route_answers_401(
    world: World, route: RouteKey
) -> None:
    case = BUILDERS[route](world, None)
    before = case.snapshot()
    r = case.send()
    try:
        assert r.status == 401, (r.status, r.body[:300])
        assert r.error_code == "not_authenticated"
        _refusal_is_clean(r)
        assert case.snapshot() == before
    finally:
        if case.cleanup:
            case.cleanup(r)

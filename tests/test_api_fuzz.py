"""The OpenAPI document at /api/v1/openapi.json, exercised by a property-based
fuzzer (schemathesis) against a live appliance: every operation, as each
role and anonymously, with valid-by-schema and schema-violating requests.
No answer may be a 5xx, and every answer the application gives must conform
to the document: a documented status, the documented content type, an error
body of the documented shape, and schema-violating requests refused with a
4xx. (A request too malformed for HTTP itself, e.g. a control character in
a header, is refused by aiohttp's parser with a plain-text 400 before the
application sees it; for those only "no 5xx" is checked.)

The fuzzer runs on an appliance of its own (started for this module): it
registers and imports random subjects, corrects them, creates and changes
accounts, rotates keys and sets random security policies, none of which may
leak into the tests sharing the session's appliance. On it nothing needs
excluding; what would end or change the fuzzing identity itself is handled:

- DELETE /session (sign-out) runs with a second session of the identity;
- POST /session/password runs as the identity: random current passwords
  never match (they lock the account's next sign-in, which no one makes,
  not its session);
- PUT /policy runs last, and the policy is put back through the vault's
  socket after it (a random allowed-networks list can shut 127.0.0.1 out).

The public operations that ignore the bearer token (status, sign-in) are
fuzzed once, anonymously. Bounded: 15 valid and 10 invalid requests per
operation for each identity it is meant for, 4 and 3 for the others (the
vault refuses them at its role check), fewer for the two operations that
hash a password on every request; derandomized (the same requests every
run), no shrinking (a failure is reported as found, with a curl line to
reproduce it). Path variables that name records get real ones half the
time, so handlers past the lookup are reached too. About 1.5 minutes on
two cores."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi import checks as openapi_checks

from kura.console import openapi
from kura.console.api import ROUTES
from kura.core import roles
from kura.core.roles import Role
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, activate, my_numbers, provision

T = TypeVar("T")

IDENTITIES = ("MU", "MA", "SA", "DA", "anonymous")
PREFIX = "/api/v1"
EXAMPLES = (15, 10)  # valid, invalid requests, for an identity the operation is meant for
REFUSED_EXAMPLES = (4, 3)  # for the others (refused at the vault's role check)
SLOW_EXAMPLES = (8, 6)  # for operations that hash a password on every request

NO_SUCH_RECORD = str(uuid.UUID(int=0x5F0C2A4E << 96, version=4))  # a well-formed id of nothing

SIGN_OUT = ("DELETE", PREFIX + "/session")
POLICY_SET = ("PUT", PREFIX + "/policy")
# Public and blind to the bearer token: one identity is enough.
TOKEN_BLIND = {("GET", PREFIX + "/status"), ("POST", PREFIX + "/session")}
SLOW = {("POST", PREFIX + "/session"), ("POST", PREFIX + "/session/password")}

CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


def operations() -> list[tuple[str, str]]:
    """Every operation of the document the console serves (built from the
    same route table), PUT /policy last."""
    document = openapi.document()
    found = [
        (method.upper(), path)
        for path, methods in document["paths"].items()
        for method in methods
    ]
    return sorted(found, key=lambda op: op == POLICY_SET)


def meant_for(operation: tuple[str, str], identity: str) -> bool:
    """Whether the operation is for this identity (kura.core.roles; the role
    matrix tests check those rules; here they only spend the budget where
    requests get past the role check)."""
    method, path = operation
    route = next(r for r in ROUTES if r.method == method and PREFIX + r.path == path)
    if route.public or route.op in roles.PUBLIC:
        return True
    return identity != "anonymous" and roles.may(Role(identity), route.op)


def budget(operation: tuple[str, str], identity: str) -> tuple[int, int]:
    if operation in SLOW:
        return SLOW_EXAMPLES
    return EXAMPLES if meant_for(operation, identity) else REFUSED_EXAMPLES


def cases() -> list[tuple[tuple[str, str], str]]:
    return [
        (operation, identity)
        for operation in operations()
        for identity in IDENTITIES
        if identity == "anonymous" or operation not in TOKEN_BLIND
    ]


@dataclass
class Fuzzed:
    """The fuzzer's own appliance, its identities and some real records."""

    appliance: LocalAppliance
    admin: Api
    identities: dict[str, Api]
    real: dict[str, list[str]]  # path variable -> values that name real records
    schemas: dict[str, Any] = field(default_factory=dict)

    def schema(self, identity: str) -> Any:
        """The live document, loaded over HTTPS (verified), with the identity's
        bearer token in every request."""
        if identity not in self.schemas:
            app = self.appliance
            loaded = schemathesis.openapi.from_url(
                app.url + PREFIX + "/openapi.json", config=schemathesis.Config(),
                verify=str(app.cert),
            )
            loaded.config.update(base_url=app.url, tls_verify=str(app.cert),
                                 request_timeout=60)
            who = self.identities.get(identity)
            if who is not None:
                loaded.config.update(headers={"Authorization": f"Bearer {who.token}"})
            self.schemas[identity] = loaded
        return self.schemas[identity]


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    app = new_appliance("fuzz")
    app.start()
    try:
        password = off_the_loop(lambda: app.bootstrap_da("admin"))
        assert password
        admin = activate(Api(app.url, app.cert).sign_in("admin", password), password)
        identities = {"DA": admin, **{
            role: provision(admin, f"fuzz-{role.lower()}", role) for role in ("MU", "MA", "SA")
        }}
        targets = []  # accounts for the DA's operations on /users/{username}
        for n in (1, 2):
            # DA accounts exist at once (an MU would wait for an approver).
            created = admin.post("/users", {"username": f"fuzz-target-{n}", "role": "DA"})
            assert created.status == 200, created.body[:300]
            targets.append(f"fuzz-target-{n}")
        ids = []
        for n, number in enumerate(my_numbers(3, seed=4242)):
            r = identities["MU"].post("/payees", {"code": f"FZ-{n}", "name": "試験 花子",
                                                  "number": number})
            assert r.status in (200, 201), r.body[:300]
            ids.append(str(r.json["subject"]["id"]))
        real = {"id": ids, "username": targets,
                "basis": ["employment", "contract", "last_payment"]}
        yield Fuzzed(app, admin, identities, real)
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)  # the folder new_appliance made


def with_real_records(strategy: Any, real: dict[str, list[str]]) -> Any:
    """Half the cases get path variables that name real records."""

    @st.composite
    def cases(draw: Callable[[Any], Any]) -> Any:
        case = draw(strategy)
        if case.path_parameters and draw(st.booleans()):
            for name in list(case.path_parameters):
                if real.get(name):
                    case.path_parameters[name] = draw(st.sampled_from(real[name]))
        return case

    return cases()


def has_inputs(operation: Any) -> bool:
    """Whether a request can violate the schema (a path variable is any
    string, so only a body or a typed query can)."""
    return bool(operation.body) or bool(operation.query)


def on_the_socket(
    fuzz: Fuzzed, op: str, args: dict[str, Any], as_role: str = "SA"
) -> dict[str, Any]:
    """A vault operation as the SA (or ``as_role``), on the vault's socket (its 'local' client
    is never shut out by the allowed networks a random policy may have set).
    In a thread of its own: the browser tests' Playwright may be holding an
    event loop in this one."""
    call = fuzz.appliance.vault_call
    token = fuzz.identities[as_role].token
    return off_the_loop(lambda: asyncio.run(call(op, args, token)))


def off_the_loop(work: Callable[[], T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def fuzz(
    api_operation: Any, mode: GenerationMode, examples: int, real: dict[str, list[str]],
    identity: str, bearer: dict[str, str],
) -> None:
    """``examples`` requests of ``mode`` to one operation, each answer checked."""
    checks = list(CHECKS)
    if mode is GenerationMode.POSITIVE:
        strategy = with_real_records(api_operation.as_strategy(generation_mode=mode), real)
    else:
        # A path variable is any string: it cannot be made invalid (whatever is
        # generated is a string once in the URL), so the body or the query is.
        names = [p.name for p in api_operation.path_parameters]
        strategy = api_operation.as_strategy(
            generation_mode=mode,
            path_parameters={n: (real.get(n) or [NO_SUCH_RECORD])[0] for n in names} or None,
        )
        checks.append(openapi_checks.negative_data_rejection)

    @settings(
        max_examples=examples, derandomize=True, database=None, deadline=None,
        phases=[Phase.explicit, Phase.generate], print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def exercise(case: Any) -> None:
        if mode is GenerationMode.NEGATIVE and not api_operation.query:
            # An optional body left out is a valid request, whatever the mode says.
            assume(case.body is not NOT_SET)
        if identity == "anonymous":
            case.headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
        response = case.call(headers=bearer or None)
        answered_by_app = "x-content-type-options" in response.headers  # set by our middleware
        case.validate_response(
            response, checks=checks if answered_by_app else [not_a_server_error],
            headers=bearer or None,
        )

    exercise()


@pytest.mark.parametrize(
    ("operation", "identity"), cases(), ids=lambda v: f"{v[0]} {v[1]}" if isinstance(v, tuple)
    else v,
)
def test_no_server_error_and_answers_conform(
    operation: tuple[str, str], identity: str, fuzzed: Fuzzed
) -> None:
    method, path = operation
    api_operation = fuzzed.schema(identity)[path][method]
    bearer: dict[str, str] = {}
    if operation == SIGN_OUT and identity != "anonymous":
        who = fuzzed.identities[identity]
        second = who.sign_in(who.username, who.password, who.totp_secret)
        bearer = {"Authorization": f"Bearer {second.token}"}
    policy = None
    if operation == POLICY_SET:
        policy = on_the_socket(fuzzed, "policy.get", {})["policy"]
    valid, invalid = budget(operation, identity)
    modes = [(GenerationMode.POSITIVE, valid)]
    if has_inputs(api_operation):
        modes.append((GenerationMode.NEGATIVE, invalid))
    try:
        for mode, examples in modes:
            fuzz(api_operation, mode, examples, fuzzed.real, identity, bearer)
    finally:
        if policy is not None:
            put_back = on_the_socket(fuzzed, "policy.set", {"policy": policy})
            if put_back["pending"]:
                # Putting back a weaker policy than the fuzzer left waits for
                # the second person: the MA (this appliance has one SA).
                on_the_socket(fuzzed, "policy.approve", {"id": put_back["pending"]["id"]},
                              as_role="MA")


def test_every_operation_was_fuzzed(fuzzed: Fuzzed) -> None:
    """The live document has exactly the operations parametrized above."""
    live = {
        (op.ok().method.upper(), op.ok().path)
        for op in fuzzed.schema("anonymous").get_all_operations()
    }
    assert live == set(operations())

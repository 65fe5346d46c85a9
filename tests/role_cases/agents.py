"""Role-matrix rows for the endpoint agents (see tests/role_cases/__init__.py).

From issue 12 and DESIGN.md ("SA: … agent policies"): the SA enrols, lists
and revokes agents and edits their policies; alerts are read by the SA and
the DA; the agent CA's certificate and keys are public values. Revoking an
agent that does not exist is judged on its merits (404) after the role
check, so no agent has to be enrolled for the matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import Response
    from tests.test_role_matrix import Case, World

EVERYONE = frozenset({"MU", "MA", "SA", "DA"})
SA, DA_SA = frozenset({"SA"}), frozenset({"DA", "SA"})


def _tokens(world: World) -> list[dict[str, Any]]:
    r = world.sa.get("/agents/tokens")
    assert r.status == 200, r.body
    return list(r.json["tokens"])


def _policy(world: World) -> dict[str, Any]:
    r = world.sa.get("/agents/policy/clerk-pc")
    assert r.status == 200, r.body
    return dict(r.json)


def ca(world: World, role: str | None) -> Case:
    def public_values(r: Response) -> None:
        assert r.json["ca_pem"].startswith("-----BEGIN CERTIFICATE-----")
        assert len(r.json["fingerprint"].replace(":", "")) == 64

    return world.case(world.client(role), "GET", "/agents/ca", followup=public_values)


def list_agents(world: World, role: str | None) -> Case:
    return world.case(world.client(role), "GET", "/agents")


def revoke(world: World, role: str | None) -> Case:
    return world.case(world.client(role), "POST", "/agents/no-such-agent/revoke",
                      {"reason": "role matrix"}, allowed_status=404)


def list_tokens(world: World, role: str | None) -> Case:
    return world.case(world.client(role), "GET", "/agents/tokens")


def create_token(world: World, role: str | None) -> Case:
    def shown_once(r: Response) -> None:
        assert r.json["token"] and "kura-agent enroll" in r.json["command"]
        assert r.json["token"] not in world.sa.get("/agents/tokens").body.decode()

    def withdraw(r: Response) -> None:
        if 200 <= r.status < 300:
            world.sa.post(f"/agents/tokens/{r.json['token_id']}/withdraw", {})

    return world.case(world.client(role), "POST", "/agents/tokens",
                      {"profile": "clerk-pc", "label": "role-matrix", "minutes": 5},
                      snapshot=lambda: len(_tokens(world)), followup=shown_once,
                      cleanup=withdraw)


def withdraw_token(world: World, role: str | None) -> Case:
    made = world.sa.post("/agents/tokens", {"profile": "business-server", "label": "rm-w"})
    assert made.status in (200, 201), made.body
    token_id = made.json["token_id"]

    def state() -> str:
        return next(t["state"] for t in _tokens(world) if t["id"] == token_id)

    def withdrawn(r: Response) -> None:
        assert state() == "withdrawn"

    def tidy(r: Response) -> None:
        if state() == "open":
            world.sa.post(f"/agents/tokens/{token_id}/withdraw", {})

    return world.case(world.client(role), "POST", f"/agents/tokens/{token_id}/withdraw", {},
                      snapshot=state, followup=withdrawn, cleanup=tidy)


def get_policy(world: World, role: str | None) -> Case:
    return world.case(world.client(role), "GET", "/agents/policy/clerk-pc")


def set_policy(world: World, role: str | None) -> Case:
    current = _policy(world)
    body = {"policy": current["policy"], "tests": current["tests"],
            "version": current["version"]}

    def new_version(r: Response) -> None:
        assert r.json["version"] == current["version"] + 1

    return world.case(world.client(role), "PUT", "/agents/policy/clerk-pc", body,
                      snapshot=lambda: _policy(world)["version"], followup=new_version)


def alerts(world: World, role: str | None) -> Case:
    return world.case(world.client(role), "GET", "/alerts")


EXPECTED = {
    ("GET", "/agents/ca"): EVERYONE,
    ("GET", "/agents"): SA,
    ("POST", "/agents/{agent_id}/revoke"): SA,
    ("GET", "/agents/tokens"): SA,
    ("POST", "/agents/tokens"): SA,
    ("POST", "/agents/tokens/{token_id}/withdraw"): SA,
    ("GET", "/agents/policy/{profile}"): SA,
    ("PUT", "/agents/policy/{profile}"): SA,
    ("GET", "/alerts"): DA_SA,
}
BUILDERS = {
    ("GET", "/agents/ca"): ca,
    ("GET", "/agents"): list_agents,
    ("POST", "/agents/{agent_id}/revoke"): revoke,
    ("GET", "/agents/tokens"): list_tokens,
    ("POST", "/agents/tokens"): create_token,
    ("POST", "/agents/tokens/{token_id}/withdraw"): withdraw_token,
    ("GET", "/agents/policy/{profile}"): get_policy,
    ("PUT", "/agents/policy/{profile}"): set_policy,
    ("GET", "/alerts"): alerts,
}
PUBLIC = frozenset({("GET", "/agents/ca")})

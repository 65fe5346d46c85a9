"""The Security Admin's pages for endpoint agents (docs/agents.md, docs/console.md):

- ``/admin/agents``: the enrolled agents (red when silent or not compliant),
  the open alerts above them, and revoking one with a reason, confirmed on
  a page of its own;
- ``/admin/agents/tokens``: a one-time enrolment token, shown once as text
  and as a QR code with the whole ``kura-agent enroll`` command, and the
  tokens of the last days (never their value) with withdraw;
- ``/admin/agents/policy/{profile}``: a profile's policy and its test cases
  as rows of a form. The vault runs the cases on saving; a refused save shows
  the failing cases and keeps everything the SA typed.

The vault decides and audits every step (kura.vault.agents); these views
turn form rows into its JSON and its answers back into rows.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from kura.console.vaultclient import VaultError
from kura.console.web import auth  # qr_data_uri; auth imports this module for the home page
from kura.console.web.menu import N_
from kura.console.web.pages import (
    Visitor,
    call,
    form,
    gettext_for,
    language,
    message,
    page,
    redirect,
    render_page,
    text_field,
)
from kura.core.errors import BadRequest, NotFound
from kura.core.roles import Role

routes = web.RouteTableDef()

PROFILES = ("clerk-pc", "business-server")
PROFILE_LABELS: dict[str, str] = {
    "clerk-pc": N_("Clerk PC"),
    "business-server": N_("Business server"),
}
TOKEN_STATES: dict[str, str] = {
    "open": N_("Not used yet"),
    "used": N_("Used for enrolment"),
    "expired": N_("Expired"),
    "withdrawn": N_("Withdrawn"),
}
# The vault's reasons for a test case's outcome (kura.core.agentpolicy.outcome).
WHY: dict[str, str] = {
    "unknown sender agent": N_("the sending agent is not enrolled"),
    "unknown target agent": N_("the target agent is not enrolled"),
    "the appliance": N_("the appliance answers on this port"),
    "not an appliance port": N_("the appliance does not answer on this port"),
    "not allowed by the clerk-pc policy": N_("the clerk PC policy does not allow it"),
    "not an enrolled host": N_("not an enrolled host: nothing of ours filters it"),
    "a clerk's PC accepts no connections": N_("a clerk PC accepts no connections"),
    "allowed by the business-server policy": N_("allowed by the business server policy"),
    "protected by the business-server policy": N_("protected by the business server policy"),
    "not a protected port": N_("not a protected port"),
}
EXPECT_LABELS = {"reach": N_("reaches"), "blocked": N_("is blocked")}
DEFAULT_MINUTES = 15  # a token's lifetime when the field is left empty (docs/agents.md)
BLANK_ROWS = 3  # empty rows under the filled ones; "Add rows" gives three more
MAX_ROWS = 200


class AgentFormError(BadRequest):
    """A row of the policy form cannot be read (ports that are not numbers …)."""

    code = "agent_policy_form"
    status = 422


# --- the agents list ------------------------------------------------------------------


def _bad_agent(agent: dict[str, Any]) -> bool:
    return agent["state"] == "active" and not agent["compliant"]


async def home_notes(request: web.Request, who: Visitor | None) -> dict[str, Any]:
    """For the SA's home page: how many active agents are silent or not
    compliant (an empty dict for everyone else)."""
    if who is None or who.role != Role.SA:
        return {}
    try:
        listed = await call(request, "agents.list")
    except VaultError:
        return {}
    return {"agents_bad": sum(1 for a in listed["agents"] if _bad_agent(a)),
            "agents_total": sum(1 for a in listed["agents"] if a["state"] == "active")}


@routes.get("/admin/agents")
@page(Role.SA)
async def agents_page(request: web.Request) -> web.Response:
    listed = (await call(request, "agents.list"))["agents"]
    alerts = [a for a in (await call(request, "alerts.list"))["alerts"] if not a.get("cleared")]
    labels = {a["agent_id"]: a["label"] or a["hostname"] for a in listed}
    listed.sort(key=lambda a: (a["state"] != "active", not _bad_agent(a), a["label"]))
    return render_page(
        request, "admin/agents.html", agents=listed, alerts=alerts, labels=labels,
        profiles=PROFILE_LABELS, bad=sum(1 for a in listed if _bad_agent(a)),
        english=language(request) == "en",
    )


async def _agent(request: web.Request, agent_id: str) -> dict[str, Any]:
    for agent in (await call(request, "agents.list"))["agents"]:
        if agent["agent_id"] == agent_id:
            return dict(agent)
    raise NotFound("no such agent", "そのエージェントはありません。")


@routes.get("/admin/agents/{agent_id}/revoke")
@page(Role.SA)
async def revoke_page(request: web.Request) -> web.Response:
    agent = await _agent(request, request.match_info["agent_id"])
    return render_page(request, "admin/agent_revoke.html", agent=agent, profiles=PROFILE_LABELS,
                       reason="")


@routes.post("/admin/agents/{agent_id}/revoke")
@page(Role.SA)
async def revoke(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    agent = await _agent(request, request.match_info["agent_id"])
    reason = text_field(data, "reason", 500)
    if not reason:
        _ = gettext_for(request)
        return render_page(request, "admin/agent_revoke.html", status=422, agent=agent,
                           profiles=PROFILE_LABELS, reason=reason,
                           error=_("Give a reason: it goes into the audit log."))
    await call(request, "agents.revoke", {"agent_id": agent["agent_id"], "reason": reason})
    return redirect("/admin/agents", N_("The agent's certificate is revoked."))


# --- enrolment tokens -------------------------------------------------------------------


def _tokens_page(request: web.Request, tokens: list[dict[str, Any]], made: dict[str, Any] | None,
                 typed: dict[str, str], status: int = 200, error: str | None = None
                 ) -> web.Response:
    return render_page(
        request, "admin/agent_tokens.html", status=status, error=error, tokens=tokens,
        made=made, qr=auth.qr_data_uri(made["command"]) if made else None, typed=typed,
        profiles=PROFILE_LABELS, states=TOKEN_STATES,
    )


@routes.get("/admin/agents/tokens")
@page(Role.SA)
async def tokens_page(request: web.Request) -> web.Response:
    tokens = (await call(request, "agents.tokens"))["tokens"]
    return _tokens_page(request, tokens, None, {"profile": "clerk-pc", "label": "",
                                                "minutes": "15"})


@routes.post("/admin/agents/tokens")
@page(Role.SA)
async def token_create(request: web.Request) -> web.Response:
    data = await form(request)
    typed = {"profile": text_field(data, "profile", 40), "label": text_field(data, "label", 100),
             "minutes": text_field(data, "minutes", 10)}
    try:
        minutes = _whole(typed["minutes"], "minutes", empty=DEFAULT_MINUTES)
        made = await call(request, "agents.token_create", {
            "profile": typed["profile"], "label": typed["label"], "minutes": minutes})
    except (VaultError, AgentFormError) as exc:
        tokens = (await call(request, "agents.tokens"))["tokens"]
        status = exc.http_status if isinstance(exc, VaultError) else exc.status
        return _tokens_page(request, tokens, None, typed, status, message(request, exc))
    tokens = (await call(request, "agents.tokens"))["tokens"]
    # Shown once: this answer is not stored (no-store), and the vault keeps
    # only the token's SHA-256.
    return _tokens_page(request, tokens, made, {**typed, "label": ""})


@routes.post("/admin/agents/tokens/{token_id}/withdraw")
@page(Role.SA)
async def token_withdraw(request: web.Request) -> web.StreamResponse:
    await form(request)
    await call(request, "agents.token_withdraw", {"token_id": request.match_info["token_id"]})
    return redirect("/admin/agents/tokens", N_("The token is withdrawn."))


# --- the policy of a profile -------------------------------------------------------------


def _whole(text: str, name: str, empty: int | None = None) -> int:
    value = text.strip().translate(_FULL_WIDTH_DIGITS)
    if not value and empty is not None:
        return empty
    if not value.isdigit() or len(value) > 6:
        raise AgentFormError(f"{name}: enter a whole number.", f"{name}: 整数で入力してください。",
                             field=name)
    return int(value)


def _ports(text: str, name: str) -> list[int]:
    parts = [p for p in text.replace("、", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise AgentFormError(f"{name}: enter one or more ports (such as 443, 8443).",
                             f"{name}: ポートを1つ以上入力してください（例: 443, 8443）。",
                             field=name)
    return [_whole(p, name) for p in parts]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def _rows(data: MultiDictProxy[Any], prefix: str, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The form's rows ``prefix_NAME_i`` as typed, without the empty ones."""
    count = min(_whole(text_field(data, f"{prefix}_rows", 6) or "0", f"{prefix}_rows"), MAX_ROWS)
    rows = []
    for i in range(count):
        row: dict[str, Any] = {n: text_field(data, f"{prefix}_{n}_{i}", 200) for n in names}
        if prefix == "protect":
            row["from"] = [str(v) for v in data.getall(f"protect_from_{i}", [])][:1000]
        if any(v for k, v in row.items() if k not in ("proto", "expect", "from_kind",
                                                       "to_kind", "from")):
            rows.append(row)
    return rows


ALLOW_FIELDS = ("to", "proto", "ports")
PROTECT_FIELDS = ("proto", "ports")
TEST_FIELDS = ("from_kind", "from_address", "to_kind", "to_address", "port", "proto", "expect")


def _typed(profile: str, data: MultiDictProxy[Any]) -> dict[str, Any]:
    """Everything the SA typed, as the form shows it again."""
    typed: dict[str, Any] = {
        "usb_mass_storage": text_field(data, "usb_mass_storage", 10) or "block",
        "require_disk_encryption": data.get("require_disk_encryption") == "on",
        "max_security_updates": text_field(data, "max_security_updates", 10),
        "dns": text_field(data, "dns", 2000),
        "ntp": text_field(data, "ntp", 2000),
        "tests": _rows(data, "test", TEST_FIELDS),
    }
    if profile == "clerk-pc":
        typed["allow"] = _rows(data, "allow", ALLOW_FIELDS)
    else:
        typed["protect"] = _rows(data, "protect", PROTECT_FIELDS)
    return typed


def _endpoint(kind: str, address: str, name: str) -> str:
    if kind == "outside":
        return "outside"
    if kind.startswith("agent:"):
        return kind
    if not address:
        raise AgentFormError(f"{name}: enter an address.", f"{name}: アドレスを入力してください。",
                             field=name)
    return address


def _policy_body(profile: str, typed: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """(policy, tests) for agents.policy_set from the typed form."""
    policy: dict[str, Any] = {
        "usb_mass_storage": typed["usb_mass_storage"],
        "require_disk_encryption": typed["require_disk_encryption"],
        "max_security_updates": _whole(typed["max_security_updates"], "max_security_updates",
                                       empty=-1),
        "dns": _lines(typed["dns"]),
        "ntp": _lines(typed["ntp"]),
    }
    if policy["max_security_updates"] == -1:
        policy["max_security_updates"] = None
    if profile == "clerk-pc":
        policy["allow"] = [
            {"to": row["to"], "proto": row["proto"] or "tcp",
             "ports": _ports(row["ports"], f"allow.{i}.ports")}
            for i, row in enumerate(typed["allow"])
        ]
    else:
        policy["protect"] = [
            {"proto": row["proto"] or "tcp", "ports": _ports(row["ports"], f"protect.{i}.ports"),
             "from": "clerk-pcs" if not row["from"] or "clerk-pcs" in row["from"]
             else row["from"]}
            for i, row in enumerate(typed["protect"])
        ]
    tests = []
    for i, row in enumerate(typed["tests"]):
        source = _endpoint(row["from_kind"], row["from_address"], f"tests.{i}.from")
        if source not in ("outside",) and not source.startswith("agent:"):
            source = f"address:{source}"
        tests.append({
            "from": source,
            "to": _endpoint(row["to_kind"] if row["to_kind"] != "outside" else "address",
                            row["to_address"], f"tests.{i}.to"),
            "port": _whole(row["port"], f"tests.{i}.port"),
            "proto": row["proto"] or "tcp",
            "expect": row["expect"] or "reach",
        })
    return policy, tests


def _shown(profile: str, policy: dict[str, Any], tests: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored policy and cases as the form shows them."""
    updates = policy.get("max_security_updates")
    typed: dict[str, Any] = {
        "usb_mass_storage": policy.get("usb_mass_storage", "block"),
        "require_disk_encryption": bool(policy.get("require_disk_encryption")),
        "max_security_updates": "" if updates is None else str(updates),
        "dns": "\n".join(policy.get("dns", [])),
        "ntp": "\n".join(policy.get("ntp", [])),
        "tests": [],
    }
    for case in tests:
        source, to = str(case["from"]), str(case["to"])
        typed["tests"].append({
            "from_kind": "address" if source.startswith("address:") else source,
            "from_address": source.removeprefix("address:") if source.startswith("address:")
            else "",
            "to_kind": to if to.startswith("agent:") else "address",
            "to_address": "" if to.startswith("agent:") else to,
            "port": str(case["port"]), "proto": case.get("proto", "tcp"),
            "expect": case["expect"],
        })
    if profile == "clerk-pc":
        typed["allow"] = [{"to": r["to"], "proto": r["proto"],
                           "ports": ", ".join(str(p) for p in r["ports"])}
                          for r in policy.get("allow", [])]
    else:
        typed["protect"] = [{"proto": r["proto"], "ports": ", ".join(str(p) for p in r["ports"]),
                             "from": ["clerk-pcs"] if r["from"] == "clerk-pcs" else r["from"]}
                            for r in policy.get("protect", [])]
    return typed


def _failed_rows(request: web.Request, failed: list[dict[str, Any]],
                 names: dict[str, str]) -> list[dict[str, Any]]:
    """The vault's failing cases, as a person reads them."""
    _ = gettext_for(request)

    def endpoint(text: str) -> str:
        if text == "outside":
            return str(_("a host outside"))
        if text.startswith("agent:"):
            return names.get(text[6:], text[6:])
        return text.removeprefix("address:")

    return [{
        "from": endpoint(str(f["from"])), "to": endpoint(str(f["to"])),
        "port": f["port"], "proto": f["proto"],
        "expect": _(EXPECT_LABELS.get(str(f["expect"]), str(f["expect"]))),
        "got": _(EXPECT_LABELS.get(str(f["got"]), str(f["got"]))),
        "why": _(WHY[str(f["why"])]) if str(f.get("why")) in WHY else str(f.get("why", "")),
        "key": (str(f["from"]), str(f["to"]), int(f["port"]), str(f["proto"])),
    } for f in failed]


async def _policy_page(request: web.Request, profile: str, typed: dict[str, Any], version: int,
                       serial: int | None, status: int = 200, error: str | None = None,
                       failed: list[dict[str, Any]] | None = None, extra_rows: int = 0
                       ) -> web.Response:
    agents = [a for a in (await call(request, "agents.list"))["agents"]
              if a["state"] == "active"]
    names = {a["agent_id"]: a["label"] or a["hostname"] for a in agents}
    shown_failed = _failed_rows(request, failed or [], names)
    failing = {row["key"] for row in shown_failed}
    blank = BLANK_ROWS + extra_rows
    rows = {
        "allow": typed.get("allow", []) + [{"to": "", "proto": "tcp", "ports": ""}] * blank,
        "protect": typed.get("protect", []) + [{"proto": "tcp", "ports": "", "from": []}] * blank,
        "tests": [{**row, "failing": _case_key(row) in failing} for row in typed["tests"]]
        + [{"from_kind": "outside", "from_address": "", "to_kind": "address", "to_address": "",
            "port": "", "proto": "tcp", "expect": "reach", "failing": False}] * blank,
    }
    return render_page(
        request, "admin/agent_policy.html", status=status, error=error, profile=profile,
        profiles=PROFILE_LABELS, typed=typed, version=version, serial=serial, rows=rows,
        terminals=[a for a in agents if a["profile"] == "clerk-pc"], agents=agents,
        names=names, extra=extra_rows, failed=shown_failed,
    )


def _case_key(row: dict[str, Any]) -> tuple[str, str, int, str] | None:
    """A typed case as the vault names a failing one (to mark its row)."""
    try:
        source = _endpoint(row["from_kind"], row["from_address"], "from")
        to = _endpoint(row["to_kind"] if row["to_kind"] != "outside" else "address",
                       row["to_address"], "to")
        port = _whole(row["port"], "port")
    except AgentFormError:
        return None
    if source != "outside" and not source.startswith("agent:"):
        source = f"address:{source}"
    return source, to, port, row["proto"] or "tcp"


def _profile(request: web.Request) -> str:
    profile = request.match_info["profile"]
    if profile not in PROFILES:
        raise NotFound("no such profile", "そのプロファイルはありません。")
    return profile


@routes.get("/admin/agents/policy/{profile}")
@page(Role.SA)
async def policy_page(request: web.Request) -> web.Response:
    profile = _profile(request)
    found = await call(request, "agents.policy_get", {"profile": profile})
    return await _policy_page(request, profile, _shown(profile, found["policy"], found["tests"]),
                              int(found["version"]), found.get("serial"))


@routes.post("/admin/agents/policy/{profile}")
@page(Role.SA)
async def policy_save(request: web.Request) -> web.Response:
    profile = _profile(request)
    data = await form(request)
    version = _whole(text_field(data, "version", 10) or "0", "version")
    typed = _typed(profile, data)
    if data.get("more"):  # "Add rows": the same form again, three rows longer
        extra = min(_whole(text_field(data, "extra", 6) or "0", "extra") + BLANK_ROWS, 50)
        return await _policy_page(request, profile, typed, version, None, extra_rows=extra)
    try:
        policy, tests = _policy_body(profile, typed)
        saved = await call(request, "agents.policy_set", {
            "profile": profile, "policy": policy, "tests": tests, "version": version})
    except AgentFormError as exc:
        return await _policy_page(request, profile, typed, version, None, exc.status,
                                  message(request, exc))
    except VaultError as exc:
        if exc.vault_code not in ("policy_tests_failed", "agent_policy_invalid", "bad_request",
                                  "conflict"):
            raise
        failed = exc.detail.get("failed") if exc.vault_code == "policy_tests_failed" else None
        return await _policy_page(request, profile, typed, version, None, exc.http_status,
                                  message(request, exc), failed if isinstance(failed, list)
                                  else None)
    del saved
    return redirect(f"/admin/agents/policy/{profile}",
                    N_("The policy is saved: the agents receive it as a new bundle."))


_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")

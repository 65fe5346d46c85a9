"""Endpoint agents in the vault (docs/agents.md): the CA, enrolment, the
per-profile policy and its signed bundles, heartbeats, compliance.

The vault holds every key (kura.core.keys.AgentKeys) and writes every step
to the audit chain; kura-policy, the daemon agents talk to, only relays. Its
operations (``kura.core.roles.SERVICE``) need no session: the dispatcher
lets only the uids in ``[vault] policy_uids`` call them, as the actor
"kura-policy". The SA's operations (tokens, the agents list, revocation,
the policy) are ordinary session operations.

Every change to tokens, agents, policies and bundles takes one
transaction-scoped lock (``Tx.lock_agents``): a bundle's body is made from
all of them, and its serial must follow the state it was made from. A new
bundle or a revocation wakes ``agents.watch`` (an ``asyncio.Event``), so
kura-policy pushes the bundle, or drops the revoked agent, within a second.

Every few seconds the primary (or single) vault judges the agents
(``agent_sweep``): one that turned silent or non-compliant is audited and
raises an alert until it is back (``agent.compliant``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from kura.core import agentca, agentpolicy, audit, bundle
from kura.core import agents as rules
from kura.core.errors import BadRequest, Conflict, KuraError, NotFound
from kura.vault.base import Caller, VaultBase, jsonable, operation, record
from kura.vault.store import Row, Tx

SWEEP_SECONDS = 5.0
ALERT_DAYS = 7  # cleared alerts the list still shows
TOKENS_DAYS = 7  # used, withdrawn and expired tokens the list still shows
MAX_REPORTED = 50  # refusals and USB events audited from one report
SILENT_ALERT, NONCOMPLIANT_ALERT = "agent.silent", "agent.noncompliant"


@dataclass(frozen=True)
class Ca:
    root: x509.Certificate
    intermediate: x509.Certificate
    fingerprint: str

    @property
    def root_pem(self) -> str:
        return agentca.pem(self.root)

    @property
    def chain_pem(self) -> str:
        return agentca.pem(self.intermediate)


def _clean(value: Any) -> Any:
    """An agent's or an SA's text for the audit log: bounded, and never
    anything the number guard would refuse."""
    if isinstance(value, str):
        return "(invalid)" if audit.looks_like_my_number(value) else value[:200]
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return value if not audit.looks_like_my_number(repr(value)) else None
    if isinstance(value, Mapping):
        return {str(k)[:40]: _clean(v) for k, v in list(value.items())[:20]}
    if isinstance(value, list):
        return [_clean(v) for v in value[:20]]
    return None


def _address(text: str) -> str:
    """An IP address in normal form; an IPv4 address seen through an IPv6
    socket (``::ffff:192.0.2.1``) as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise BadRequest("address: not an IP address", "address: IP アドレスではありません。",
                         field="address") from None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def _envelope(row: Row) -> dict[str, str]:
    return {
        "format": bundle.FORMAT,
        "body": base64.b64encode(bytes(row["body"])).decode("ascii"),
        "signature": base64.b64encode(bytes(row["signature"])).decode("ascii"),
    }


class AgentOperations(VaultBase):
    # How long agents.watch waits at most (tests shorten it).
    watch_seconds: float = rules.WATCH_SECONDS
    # Starts at 1: a watcher that knows nothing yet asks with ``after`` 0 (or
    # none) and gets the whole state at once.
    _agent_generation: int = 1
    _agent_event: asyncio.Event | None = None
    _agent_swept: float = 0.0
    _agent_ca: Ca | None = None

    # --- the CA ------------------------------------------------------------------

    async def _ca(self) -> Ca:
        """The root and intermediate certificates: made once, stored in the
        settings (replicated to a standby), so the fingerprint agents pin
        never changes."""
        if self._agent_ca is not None:
            return self._agent_ca
        keys = self._keys().agent_keys
        async with self.store.transaction() as tx:
            stored = await tx.setting("agent_ca")
            if not stored and self.writable:
                await tx.lock_agents()
                stored = await tx.setting("agent_ca")
                if not stored:
                    now = self.clock()
                    root = agentca.make_root(keys.root_ca, self.config.appliance, now)
                    inter = agentca.make_intermediate(keys.issuing, root, keys.root_ca,
                                                      self.config.appliance, now)
                    stored = {"root": agentca.pem(root), "intermediate": agentca.pem(inter)}
                    await tx.set_setting("agent_ca", stored)
                    await tx.append_audit(actor="-", role="", action="agent.ca", client="local",
                                          detail={"fingerprint": agentca.fingerprint(root)})
        if not stored:
            raise KuraError("the agent CA is not made yet", "エージェント CA がまだありません。")
        root, inter = agentca.load(stored["root"]), agentca.load(stored["intermediate"])
        if not agentca.belongs(root, keys.root_ca) or not agentca.belongs(inter, keys.issuing):
            raise KuraError(
                "the stored agent CA is not this root key's",
                "保存されているエージェント CA はこのルート鍵のものではありません。",
            )
        self._agent_ca = Ca(root, inter, agentca.fingerprint(root))
        return self._agent_ca

    def _bundle_key(self) -> str:
        return bundle.public_key_text(self._keys().agent_keys.bundle_signing.public_key())

    @operation("agents.ca")
    async def agents_ca(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        ca = await self._ca()
        return {"ca_pem": ca.root_pem, "fingerprint": ca.fingerprint,
                "bundle_key": self._bundle_key()}

    # --- the world bundles are made for -----------------------------------------------

    async def _appliance_addresses(self, tx: Tx) -> tuple[str, ...]:
        """The addresses kura-policy's server certificates named (each node's
        own), and the floating address of a pair."""
        stored = await tx.setting("agent_addresses") or {}
        found = {a for addresses in stored.values() for a in addresses}
        if self.config.ha is not None:
            found.add(str(self.config.ha.vip.ip))
        return tuple(sorted(found))

    def _appliance_ports(self) -> tuple[int, ...]:
        return tuple(sorted({self.config.policy.port, self.config.console.port}))

    async def _world(self, tx: Tx, policies: dict[str, dict[str, Any]] | None = None
                     ) -> agentpolicy.World:
        found: dict[str, dict[str, Any]] = {}
        for profile in bundle.PROFILES:
            row = await tx.agent_policy(profile)
            found[profile] = row["policy"] if row else agentpolicy.default_policy(profile)
        found.update(policies or {})
        active = await tx.agents(rules.ACTIVE)
        return agentpolicy.World(
            policies=found,
            agents=tuple(agentpolicy.Agent(r["agent_id"], r["profile"], r["address"])
                         for r in active),
            appliance_addresses=await self._appliance_addresses(tx),
            appliance_ports=self._appliance_ports(),
        )

    async def _issue(self, tx: Tx, profile: str, force: bool = False) -> int | None:
        """Sign a new bundle for ``profile`` from the stored policy and the
        agents as they are now, unless the newest already says the same
        (``force``: always). Returns the new serial, or None. The caller holds
        the agents lock."""
        ca = await self._ca()
        row = await tx.agent_policy(profile)
        policy = row["policy"] if row else agentpolicy.default_policy(profile)
        version = int(row["version"]) if row else 0
        world = await self._world(tx)
        now = self.clock()
        newest = await tx.newest_bundle(profile)
        if newest is not None and not force:
            draft = agentpolicy.build_body(profile, policy, appliance=ca.fingerprint, serial=0,
                                           version=version, issued=now, world=world)
            old = bundle.verify(_envelope(newest), self._bundle_signing().public_key())
            if agentpolicy.same_content(old.body, draft):
                return None
        serial = await tx.next_bundle_serial()
        body = agentpolicy.build_body(profile, policy, appliance=ca.fingerprint, serial=serial,
                                      version=version, issued=now, world=world)
        raw = bundle.encode_body(body)
        await tx.insert_bundle(serial, profile, version, now, raw,
                               self._bundle_signing().sign(raw))
        return serial

    def _bundle_signing(self) -> Any:
        return self._keys().agent_keys.bundle_signing

    async def _refresh(self, tx: Tx) -> list[int]:
        """New bundles for whichever profile's resolved body changed (an
        address, a revoked terminal); the caller holds the agents lock."""
        made = []
        for profile in bundle.PROFILES:
            serial = await self._issue(tx, profile)
            if serial is not None:
                made.append(serial)
        return made

    async def _newest(self, profile: str) -> Row:
        """The newest bundle of ``profile``; the first is made from the
        default policy when the SA has saved none."""
        async with self.store.transaction() as tx:
            row = await tx.newest_bundle(profile)
            if row is None and self.writable:
                await tx.lock_agents()
                row = await tx.newest_bundle(profile)
                if row is None:
                    await self._issue(tx, profile, force=True)
                    row = await tx.newest_bundle(profile)
        if row is None:
            raise NotFound()
        return row

    def _wake(self) -> None:
        """A revocation or a new bundle: every agents.watch returns now."""
        self._agent_generation += 1
        if self._agent_event is not None:
            self._agent_event.set()
        self._agent_event = asyncio.Event()

    # --- the SA: tokens ----------------------------------------------------------------

    def _server(self, addresses: tuple[str, ...]) -> str:
        host = str(self.config.ha.vip.ip) if self.config.ha is not None else (
            addresses[0] if addresses else self.config.appliance)
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.config.policy.port}"

    @operation("agents.token_create")
    async def agents_token_create(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        ca = await self._ca()
        now = self.clock()
        token = rules.new_token()
        token_id = str(uuid.uuid4())
        expires = now + rules.lifetime(args.get("minutes"))
        label = str(args.get("label", ""))
        async with self.store.transaction() as tx:
            await tx.insert_agent_token({
                "id": token_id, "digest": rules.token_digest(token), "profile": args["profile"],
                "label": label, "created_by": caller.actor, "created_at": now,
                "expires": expires,
            })
            addresses = await self._appliance_addresses(tx)
            await record(tx, caller, "agent.token_create", target=token_id, detail={
                "profile": args["profile"], "label": _clean(label),
                "expires": expires.isoformat()})
        server = self._server(addresses)
        return {
            "token_id": token_id,
            "token": token,
            "expires": expires.isoformat(),
            "fingerprint": ca.fingerprint,
            "server": server,
            "command": f"kura-agent enroll --server {server} --token {token}"
                       f" --fingerprint {ca.fingerprint}",
        }

    @operation("agents.tokens")
    async def agents_tokens(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        async with self.store.transaction() as tx:
            rows = await tx.agent_tokens(now - timedelta(days=TOKENS_DAYS))
        return {"tokens": [{**jsonable(r), "state": rules.token_state(r, now)} for r in rows]}

    @operation("agents.token_withdraw")
    async def agents_token_withdraw(self, caller: Caller, args: dict[str, Any]
                                    ) -> dict[str, Any]:
        now = self.clock()
        async with self.store.transaction() as tx:
            await tx.lock_agents()
            row = await tx.agent_token(args["token_id"])
            if row is None:
                raise NotFound()
            state = rules.token_state(row, now)
            if state != "open":
                raise Conflict(f"the token is {state} already",
                               f"このトークンはすでに使えません（{state}）。", state=state)
            await tx.withdraw_agent_token(row["id"], now, caller.actor)
            await record(tx, caller, "agent.token_withdraw", target=str(row["id"]),
                         detail={"profile": row["profile"], "label": _clean(row["label"])})
        return {"token_id": str(row["id"]), "state": rules.WITHDRAWN}

    # --- the SA: agents ---------------------------------------------------------------

    @operation("agents.list")
    async def agents_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.agents()
            newest = {p: await tx.newest_bundle(p) for p in bundle.PROFILES}
        out = []
        for r in rows:
            top = newest.get(r["profile"])
            out.append({
                "agent_id": r["agent_id"],
                "label": r["label"],
                "hostname": r["hostname"],
                "profile": r["profile"],
                "state": r["state"],
                "serial": r["serial"],
                "address": r["address"],
                "enrolled_at": r["enrolled_at"].isoformat(),
                "last_seen": r["last_seen"].isoformat(),
                "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
                "policy_serial": r["policy_serial"],
                "newest_serial": int(top["serial"]) if top else None,
                "posture": r["posture"],
                "compliant": r["state"] == rules.ACTIVE and bool(r["compliant"]),
                "problems": r["problems"] if r["state"] == rules.ACTIVE else [],
            })
        return {"agents": out}

    @operation("agents.revoke")
    async def agents_revoke(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        reason = str(args.get("reason", ""))
        async with self.store.transaction() as tx:
            await tx.lock_agents()
            row = await tx.agent(args["agent_id"], lock=True)
            if row is None:
                raise NotFound()
            if row["state"] == rules.REVOKED:
                raise Conflict("the agent is revoked already", "このエージェントは失効済みです。")
            await tx.revoke_agent(row["agent_id"], now, caller.actor, reason)
            await tx.clear_alerts(row["agent_id"], now, [SILENT_ALERT, NONCOMPLIANT_ALERT])
            await record(tx, caller, "agent.revoke", target=row["agent_id"], detail={
                "profile": row["profile"], "serial": row["serial"], "reason": _clean(reason)})
            made = await self._refresh(tx)
        self._wake()
        return {"agent_id": row["agent_id"], "state": rules.REVOKED, "bundles": made}

    # --- the SA: policy ---------------------------------------------------------------

    @operation("agents.policy_get")
    async def agents_policy_get(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        profile = args["profile"]
        async with self.store.transaction() as tx:
            row = await tx.agent_policy(profile)
            newest = await tx.newest_bundle(profile)
        return {
            "profile": profile,
            "policy": row["policy"] if row else agentpolicy.default_policy(profile),
            "tests": row["tests"] if row else [],
            "version": int(row["version"]) if row else 0,
            "serial": int(newest["serial"]) if newest else None,
        }

    async def _policy_refused(self, caller: Caller, profile: str, detail: dict[str, Any]
                              ) -> None:
        # Its own transaction: the refused change's is rolled back.
        async with self.store.transaction() as tx:
            await record(tx, caller, "agent.policy_refused", outcome="denied", target=profile,
                         detail=_clean(detail))

    @operation("agents.policy_set")
    async def agents_policy_set(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        profile = args["profile"]
        policy = agentpolicy.validate(profile, args["policy"])
        given = args.get("tests")
        now = self.clock()
        failed: list[dict[str, Any]] = []
        async with self.store.transaction() as tx:
            await tx.lock_agents()
            current = await tx.agent_policy(profile)
            version = int(current["version"]) if current else 0
            if "version" in args and args["version"] != version:
                raise Conflict(
                    f"the {profile} policy was changed meanwhile (version {version})",
                    f"{profile} のポリシーは他の変更で更新されています（版 {version}）。",
                    version=version,
                )
            tests = agentpolicy.validate_tests(
                given if given is not None else (current["tests"] if current else []))
            # The other profile's stored cases hold too: a clerk-pc change
            # must not break what the business-server policy promises.
            other = next(p for p in bundle.PROFILES if p != profile)
            other_row = await tx.agent_policy(other)
            other_tests = agentpolicy.validate_tests(other_row["tests"] if other_row else [])
            world = await self._world(tx, {profile: policy})
            failed = agentpolicy.run_tests(tests + other_tests, world)
            if not failed:
                await tx.insert_agent_policy(profile, version + 1, policy,
                                             [t.to_json() for t in tests], caller.actor, now)
                serial = await self._issue(tx, profile, force=True)
                # One SA saves alone (no second person, unlike the security
                # policy): the entry names what the save opened, for the audit.
                before = current["policy"] if current else agentpolicy.default_policy(profile)
                await record(tx, caller, "agent.policy_set", target=profile, detail={
                    "version": version + 1, "serial": serial, "tests": len(tests),
                    "widened": agentpolicy.widened(before, policy)})
        if failed:
            await self._policy_refused(caller, profile, {
                "version": version, "failed": len(failed),
                "cases": [f"{f['from']} -> {f['to']}:{f['port']}/{f['proto']}"
                          for f in failed[:10]]})
            raise rules.PolicyTestsFailed(failed=failed)
        self._wake()
        return {"version": version + 1, "serial": serial}

    @operation("alerts.list")
    async def alerts_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.recent_alerts(self.clock() - timedelta(days=ALERT_DAYS))
        return {"alerts": [jsonable(r) for r in rows]}

    # --- kura-policy: certificates and enrolment ----------------------------------------

    @operation("agents.server_cert")
    async def agents_server_cert(self, caller: Caller, args: dict[str, Any]
                                 ) -> dict[str, Any]:
        ca = await self._ca()
        csr = agentca.load_csr(args["csr_pem"])
        names = [str(n) for n in args["names"]]
        cert = agentca.issue_server(csr, names, ca.intermediate,
                                    self._keys().agent_keys.issuing, self.clock())
        # The addresses agents reach this node by: no loopback, no link-local.
        addresses = sorted({a for a in agentca.ip_names(names)
                            if not ipaddress.ip_address(a).is_loopback
                            and not ipaddress.ip_address(a).is_link_local})
        made: list[int] = []
        async with self.store.transaction() as tx:
            await tx.lock_agents()
            stored = dict(await tx.setting("agent_addresses") or {})
            if stored.get(self.config.appliance) != addresses:
                stored[self.config.appliance] = addresses
                await tx.set_setting("agent_addresses", stored)
                made = await self._refresh(tx)
            await record(tx, caller, "agent.server_cert", target=agentca.serial_hex(cert),
                         detail={"names": _clean(names), "bundles": made})
        if made:
            self._wake()
        return {"certificate": agentca.pem(cert), "chain": ca.chain_pem}

    @operation("agents.enrol")
    async def agents_enrol(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        ca = await self._ca()
        now = self.clock()
        address = _address(args["address"]) if args.get("address") else None
        hostname = str(args.get("hostname", ""))[:253]
        digest = rules.token_digest(args["token"])
        refusal: str | None = None
        made: list[int] = []
        async with self.store.transaction() as tx:
            await tx.lock_agents()
            token = await tx.agent_token_by_digest(digest)
            refusal = rules.token_refusal(token, now)
            if refusal is None:
                assert token is not None
                csr = agentca.load_csr(args["csr_pem"])
                agent_id = rules.new_agent_id()
                profile = str(token["profile"])
                cert = agentca.issue_client(csr, agent_id, profile, ca.intermediate,
                                            self._keys().agent_keys.issuing, now)
                serial = agentca.serial_hex(cert)
                await tx.insert_agent({
                    "agent_id": agent_id, "serial": serial, "profile": profile,
                    "label": token["label"], "hostname": hostname,
                    "certificate": agentca.pem(cert), "token_id": token["id"],
                    "enrolled_at": now, "address": address,
                })
                await tx.use_agent_token(token["id"], now, agent_id)
                await record(tx, caller, "agent.enrol", target=agent_id, detail={
                    "profile": profile, "serial": serial, "token_id": str(token["id"]),
                    "label": _clean(token["label"]), "hostname": _clean(hostname),
                    "address": address})
                made = await self._refresh(tx)
        if refusal is not None:
            async with self.store.transaction() as tx:
                await record(tx, caller, "agent.enrol_refused", outcome="denied",
                             target=str(token["id"]) if token else "",
                             detail={"reason": refusal, "hostname": _clean(hostname),
                                     "address": address})
            raise rules.EnrolRefused(reason=refusal)
        if made:
            self._wake()
        return {
            "agent_id": agent_id,
            "profile": profile,
            "certificate": agentca.pem(cert),
            "chain": ca.chain_pem,
            "ca": ca.root_pem,
            "bundle_key": self._bundle_key(),
        }

    # --- kura-policy: connected agents ---------------------------------------------------

    async def _enrolled(self, tx: Tx, serial_text: str) -> Row:
        row = await tx.agent_by_serial(agentca.normalise_serial(serial_text))
        if row is None:
            raise rules.AgentUnknown()
        if row["state"] != rules.ACTIVE:
            raise rules.AgentRevoked()
        return row

    @operation("agents.check")
    async def agents_check(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            row = await self._enrolled(tx, args["serial"])
        return {"agent_id": row["agent_id"], "profile": row["profile"]}

    @operation("agents.heartbeat")
    async def agents_heartbeat(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        address = _address(args["address"])
        report = args.get("report") or {}
        posture = rules.posture_of(report) if report else None
        reported = report.get("policy_serial")
        policy_serial = reported if isinstance(reported, int) and not isinstance(
            reported, bool) else None
        made: list[int] = []
        async with self.store.transaction() as tx:
            row = await self._enrolled(tx, args["serial"])
            agent_id = row["agent_id"]
            moved = row["address"] != address
            if moved:
                # The lock before the row's: revocation takes them in this order.
                await tx.lock_agents()
                row = await self._enrolled(tx, args["serial"])
            await tx.agent_heard(agent_id, now, address, policy_serial, posture)
            if moved:
                await record(tx, caller, "agent.address", target=agent_id,
                             detail={"from": row["address"], "to": address})
                made = await self._refresh(tx)
            refused = report.get("refused")
            for item in (refused if isinstance(refused, list) else [])[:MAX_REPORTED]:
                await record(tx, caller, "agent.bundle_refused", outcome="denied",
                             target=agent_id, detail=_clean(
                                 item if isinstance(item, dict) else {"reason": item}))
            events = report.get("usb_events")
            for item in (events if isinstance(events, list) else [])[:MAX_REPORTED]:
                if isinstance(item, dict):
                    await record(tx, caller, "agent.usb", target=agent_id, detail=_clean(item))
            newest = await tx.newest_bundle(row["profile"])
        if made:
            self._wake()
        if newest is None:
            newest = await self._newest(row["profile"])
        return {"newest_serial": int(newest["serial"])}

    @operation("agents.bundle")
    async def agents_bundle(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        row = await self._newest(args["profile"])
        return {"envelope": _envelope(row), "serial": int(row["serial"])}

    async def _watch_state(self) -> dict[str, Any]:
        serials = {p: int((await self._newest(p))["serial"]) for p in bundle.PROFILES}
        async with self.store.transaction() as tx:
            revoked = await tx.revoked_agent_serials()
        return {"generation": self._agent_generation, "revoked": sorted(revoked),
                "serials": serials}

    @operation("agents.watch")
    async def agents_watch(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("after")
        if self._agent_event is None:
            self._agent_event = asyncio.Event()
        event = self._agent_event
        # ``after`` above the generation: the vault restarted since; answer now.
        if after is not None and after == self._agent_generation:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=self.watch_seconds)
        return await self._watch_state()

    # --- the console: the terminal a browser presented ---------------------------------

    async def terminal_standing(self, serial_hex: str) -> str:
        """``compliant``, ``noncompliant``, ``revoked`` or ``unknown``: what the
        console's ``require_enrolled_terminal`` rests on. Only a clerk's PC
        counts as a terminal."""
        try:
            serial = agentca.normalise_serial(serial_hex)
        except BadRequest:
            return "unknown"
        async with self.store.transaction() as tx:
            row = await tx.agent_by_serial(serial)
        if row is None or row["profile"] != agentpolicy.CLERK_PC:
            return "unknown"
        if row["state"] != rules.ACTIVE:
            return "revoked"
        return "compliant" if row["compliant"] else "noncompliant"

    # --- the sweep ---------------------------------------------------------------------

    async def agent_upkeep(self, now: float) -> None:
        if self.sealed or not self.writable or now - self._agent_swept < SWEEP_SECONDS:
            return
        self._agent_swept = now
        await self.agent_sweep()

    async def agent_sweep(self) -> None:
        """Judge every active agent; audit and alert what changed."""
        now = self.clock()
        async with self.store.transaction() as tx:
            agents = await tx.agents(rules.ACTIVE)
            if not agents:
                return
            newest = {p: await tx.newest_bundle(p) for p in bundle.PROFILES}
            needs = {}
            for p in bundle.PROFILES:
                row = await tx.agent_policy(p)
                needs[p] = agentpolicy.requirements(
                    row["policy"] if row else agentpolicy.default_policy(p))
            for agent in agents:
                top = newest.get(agent["profile"])
                problems = rules.evaluate(
                    rules.Standing(agent["last_seen"], agent["policy_serial"], agent["posture"]),
                    int(top["serial"]) if top else None,
                    top["issued"] if top else None,
                    needs[agent["profile"]],
                    now,
                )
                await self._judge(tx, agent, [p.to_json() for p in problems], now)

    async def _judge(self, tx: Tx, agent: Row, problems: list[dict[str, Any]],
                     now: datetime) -> None:
        if problems == agent["problems"]:
            return
        agent_id = agent["agent_id"]
        await tx.agent_judged(agent_id, not problems, problems)
        # The log and the alerts follow the kinds of problem, not their figures.
        before = {p["code"] for p in agent["problems"]}
        after = {p["code"] for p in problems}
        if before == after:
            return

        async def note(action: str, outcome: str, detail: dict[str, Any]) -> None:
            await tx.append_audit(actor="-", role="", action=action, outcome=outcome,
                                  target=agent_id, client="local", detail=detail)

        was_silent, silent = rules.SILENT in before, rules.SILENT in after
        was_bad, bad = bool(before - {rules.SILENT}), after - {rules.SILENT}
        if silent and not was_silent:
            await note("agent.silent", "error", {"last_seen": agent["last_seen"].isoformat()})
            await tx.raise_alert(SILENT_ALERT, agent_id, now,
                                 {"profile": agent["profile"], "problems": problems})
        elif was_silent and not silent:
            await tx.clear_alerts(agent_id, now, [SILENT_ALERT])
        if bad and bad != before - {rules.SILENT}:
            await note("agent.noncompliant", "error", {"problems": sorted(bad)})
            await tx.clear_alerts(agent_id, now, [NONCOMPLIANT_ALERT])
            await tx.raise_alert(NONCOMPLIANT_ALERT, agent_id, now,
                                 {"profile": agent["profile"], "problems": problems})
        elif was_bad and not bad:
            await tx.clear_alerts(agent_id, now, [NONCOMPLIANT_ALERT])
        if not after:
            await note("agent.compliant", "ok", {"was": sorted(before)})

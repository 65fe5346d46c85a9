"""The steps of the first boot, in the order of :data:`journal.STEPS`.

Each ``step_<name>`` asks its questions (or takes them from the answers
file), changes the machine through :class:`System` and marks itself done in
the journal as its very last action; a step cut short runs again from its
start, so each is written to be safe to repeat. Secrets (the DA's password,
the shares) live only in this object's memory and on the terminal.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from kura.core.errors import KuraError
from kura.pairingserver import PORT as PAIRING_PORT
from kura_firstboot import appliance, certificate, checks, database, ha, host, network
from kura_firstboot.answers import Answers
from kura_firstboot.errors import BadValue, InputTimeout, StepFailed
from kura_firstboot.journal import STAMP_FILE, STEPS, Journal
from kura_firstboot.messages import text
from kura_firstboot.system import KEYS_DIR, System
from kura_firstboot.terminal import Terminal


@dataclass(frozen=True)
class Timeouts:
    static: float = 20.0  # address on the link and the gateway answering
    dhcp: float = 45.0  # a lease and a default route
    confirm: float = 60.0  # the person at the console keeps the network
    vault: float = 60.0  # kura-vault answers on its socket


@dataclass
class Wizard:
    system: System
    term: Terminal
    journal: Journal
    answers: Answers | None = None  # set: unattended
    timeouts: Timeouts = Timeouts()
    shares: list[str] = field(default_factory=list, repr=False)
    pairing_port: int = PAIRING_PORT  # a standby waits for its primary here

    @property
    def unattended(self) -> bool:
        return self.answers is not None

    def run(self) -> None:
        while (step := self.journal.next_step) is not None:
            self.term.say(
                "step",
                number=STEPS.index(step) + 1,
                total=len(STEPS),
                name=text(f"step.{step}", self.term.lang),
            )
            getattr(self, f"step_{step}")()

    def _ask_valid(self, msg_id: str, check: object, default: str | None = None) -> str:
        """Ask until ``check`` (a function of the answer) accepts it."""
        assert callable(check)
        while True:
            answer = self.term.ask(msg_id, default)
            try:
                return str(check(answer))
            except BadValue as exc:
                self.term.problem(exc.en, exc.ja)

    # --- network -----------------------------------------------------------------

    def step_network(self) -> None:
        while True:
            plan = self._network_plan()
            self.term.say("network.applying", interface=plan.interface, mode=plan.mode)
            before = network.apply(self.system, plan)
            timeout = self.timeouts.static if plan.mode == "static" else self.timeouts.dhcp
            verdict = network.verify(self.system, plan, timeout)
            if verdict.ok:
                self.term.say("network.works", address=verdict.address or "-")
                if self.unattended or self._network_confirmed():
                    values = {**plan.to_json(), "address_seen": verdict.address}
                    self.journal.complete("network", values)
                    return
            else:
                self.term.error(verdict.problem_en, verdict.problem_ja)
            network.revert(self.system, before)
            self.term.say_both("network.reverted")
            if self.unattended:
                raise StepFailed(
                    f"the network setting did not work: {verdict.problem_en or 'not confirmed'}",
                    f"ネットワーク設定が機能しませんでした: {verdict.problem_ja or '未確認'}",
                )

    def _network_confirmed(self) -> bool:
        try:
            return self.term.confirm("network.confirm", timeout=self.timeouts.confirm,
                                     seconds=int(self.timeouts.confirm))
        except InputTimeout:
            self.term.write_newline()
            self.term.say("network.timeout")
            return False

    def _network_plan(self) -> network.NetworkPlan:
        links = network.interfaces()
        if not links:
            raise StepFailed("no network interface was found",
                             "ネットワークインターフェースが見つかりません")
        if self.answers is not None:
            return self._network_plan_from_answers(links)
        for i, link in enumerate(links, 1):
            self.term.say(
                "network.link",
                number=i,
                name=link.name,
                mac=link.mac,
                carrier=text("yes" if link.carrier else "no", self.term.lang),
                addresses=" ".join(link.addresses) or "-",
            )
        default = next((link.name for link in links if link.carrier), links[0].name)
        while True:
            answer = self.term.ask("network.interface", default)
            chosen = next(
                (
                    link
                    for i, link in enumerate(links, 1)
                    if answer in (str(i), link.name)
                ),
                None,
            )
            if chosen is not None:
                break
            self.term.say("network.no_such_link", name=answer)
        mode = self.term.choose(
            "network.mode", [("dhcp", "network.dhcp"), ("static", "network.static")], "dhcp"
        )
        if mode == "dhcp":
            return network.NetworkPlan(chosen.name, chosen.mac, "dhcp")
        address = self._ask_valid("network.address", checks.interface_address)
        gateway = self._ask_valid("network.gateway", lambda v: checks.gateway(v, address))
        dns = self._ask_valid("network.dns", lambda v: " ".join(checks.address_list(v)), gateway)
        return network.NetworkPlan(
            chosen.name, chosen.mac, "static", address, gateway, tuple(dns.split())
        )

    def _network_plan_from_answers(self, links: list[network.Interface]) -> network.NetworkPlan:
        assert self.answers is not None
        want = self.answers.network
        if want.interface:
            chosen = next((link for link in links if link.name == want.interface), None)
        elif want.mac:
            chosen = next((link for link in links if link.mac == want.mac), None)
        else:
            chosen = next((link for link in links if link.carrier), None)
        if chosen is None:
            raise StepFailed(
                "network.interface/network.mac: no such link (or none with a carrier)",
                "network.interface/network.mac: 該当するリンクがありません（または未接続）",
            )
        return network.NetworkPlan(
            chosen.name, chosen.mac, want.mode, want.address, want.gateway, want.dns
        )

    # --- host name, time, role --------------------------------------------------------

    def step_hostname(self) -> None:
        if self.answers is not None:
            name = self.answers.hostname
        else:
            current = (self.system.read_text("/etc/hostname") or "").strip()
            name = self._ask_valid("hostname", checks.hostname, current or "kura")
        host.set_hostname(self.system, name)
        self.journal.complete("hostname", {"hostname": name})

    def step_time(self) -> None:
        def known(tz: str) -> str:
            return checks.timezone(tz, host.timezone_known(self.system, tz.strip()))

        if self.answers is not None:
            try:
                tz = known(self.answers.timezone)
            except BadValue as exc:
                raise StepFailed(f"host.timezone: {exc.en}", f"host.timezone: {exc.ja}") from None
            servers = self.answers.ntp
        else:
            tz = self._ask_valid("time.zone", known, "Asia/Tokyo")
            answer = self._ask_valid(
                "time.ntp", lambda v: " ".join(checks.address_list(v, "ntp")), None
            )
            servers = tuple(answer.split())
        host.set_timezone(self.system, tz)
        host.set_ntp(self.system, servers)
        self.journal.complete("time", {"timezone": tz, "ntp": list(servers)})

    def step_role(self) -> None:
        if self.answers is not None:
            role = self.answers.role
        else:
            role = self.term.choose(
                "role", [(r, f"role.{r}") for r in checks.ROLES], "single"
            )
        values: dict[str, object] = {"role": role}
        if role in ha.PAIR_ROLES:
            pair = self._pair_answers()
            for secret in pair.bundle.passwords.values():
                self.journal.forbid(secret)
            ha.install_files(self.system, pair)
            values["ha"] = pair.to_json()
            self.term.say("ha.enrolled", node=pair.node, monitor=pair.code.address)
        elif role == "witness":
            address = self._witness_address()
            self.term.say("witness.working", address=address)
            try:
                code = ha.setup_witness(self.system, address)
            except KuraError as exc:
                raise StepFailed(f"kura witness init: {exc.message_en}",
                                 f"kura witness init: {exc.message_ja}") from None
            self.term.say("witness.code", code=code)
            values["witness"] = {"address": address, "enrol_code": code}
        host.set_role(self.system, role)
        self.journal.complete("role", values)

    @property
    def role(self) -> str:
        return str(self.journal.answers.get("role", {}).get("role", "single"))

    def _skip(self, step: str) -> bool:
        """Steps a witness (no vault) or a standby (its key and accounts come from the
        primary) does not run; recorded as skipped, in order."""
        skip = {"witness": ("tls", "database", "seal", "vault", "admin"),
                "standby": ("seal", "admin")}.get(self.role, ())
        if step not in skip:
            return False
        self.term.say("role.skip", role=self.role)
        self.journal.complete(step, {"skipped": self.role})
        return True

    def _pair_answers(self) -> ha.PairAnswers:
        if self.answers is not None:
            assert self.answers.pair is not None  # answers.parse demands [ha]
            return self.answers.pair
        # _ask_valid keeps text: the code as the witness shows it, then decoded again
        code = self._ask_valid("ha.code", lambda v: ha.encode_code(ha.check_code(v)))
        decoded = ha.check_code(code)
        while True:
            text = self._paste("ha.enrolment").decode()
            try:
                bundle = ha.check_bundle(text, decoded, datetime.datetime.now(datetime.UTC))
                break
            except BadValue as exc:
                self.term.problem(exc.en, exc.ja)
        vip = self._ask_valid(
            "ha.vip", lambda v: ha.check_vip(v, bundle.address, decoded.address))
        net = self.journal.answers.get("network", {}).get("interface")
        interface = self._ask_valid("ha.interface", _interface_name, net)
        return ha.PairAnswers(decoded, bundle, vip, interface)

    def _witness_address(self) -> str:
        net = self.journal.answers.get("network", {})
        seen = (net.get("address") or net.get("address_seen") or "").split("/")[0] or None
        if self.answers is not None:
            assert self.answers.witness_address is not None or seen is not None
            return self.answers.witness_address or str(seen)
        return self._ask_valid("witness.address", ha.check_witness_address, seen)

    # --- TLS ----------------------------------------------------------------------------

    def step_tls(self) -> None:
        if self._skip("tls"):
            return
        if self.answers is not None:
            mode = self.answers.tls_mode
        else:
            mode = self.term.choose(
                "tls.mode", [("self-signed", "tls.self_signed"), ("import", "tls.import")],
                "self-signed",
            )
        if mode == "import":
            if self.answers is not None:
                chain, key = certificate.check_pair(
                    self.answers.tls_cert.encode(), self.answers.tls_key.encode()
                )
            else:
                chain, key = self._pasted_pair()
            certificate.install(self.system, chain, key)
        else:
            certificate.make_self_signed(self.system, self._names())
        fingerprint = certificate.fingerprint(self.system)
        self.term.say("tls.fingerprint", fingerprint=fingerprint)
        self.journal.complete("tls", {"mode": mode, "fingerprint": fingerprint})

    def _names(self) -> list[str]:
        names = [self.journal.answers["hostname"]["hostname"]]
        net = self.journal.answers.get("network", {})
        for address in (net.get("address"), net.get("address_seen")):
            if address:
                ip = address.split("/")[0]
                if ip not in names:
                    names.append(ip)
        return names

    def _pasted_pair(self) -> tuple[bytes, bytes]:
        while True:
            cert = self._paste("tls.cert")
            key = self._paste("tls.key")
            try:
                return certificate.check_pair(cert, key)
            except BadValue as exc:
                self.term.problem(exc.en, exc.ja)

    def _paste(self, msg_id: str) -> bytes:
        """PEM pasted line by line, ended by an empty line."""
        self.term.say(msg_id)
        lines: list[str] = []
        while True:
            line = self.term.read_line()
            if not line.strip():
                if lines:
                    return ("\n".join(lines) + "\n").encode()
                continue
            lines.append(line.strip())

    # --- PostgreSQL ------------------------------------------------------------------------

    def step_database(self) -> None:
        if self._skip("database"):
            return
        self.term.say("database.working")
        if self.role in ha.PAIR_ROLES:
            self.term.say("ha.node_working", role=self.role)
            applied = ha.setup_node(self.system, self.role, self.journal.answers["role"]["ha"])
        else:
            applied = database.setup(self.system)
        self.journal.complete(
            "database", {"version": database.version(self.system), "migrations": applied}
        )

    # --- the root key ----------------------------------------------------------------------

    def step_seal(self) -> None:
        if self._skip("seal"):
            return
        existing = appliance.read_seal(self.system)
        if existing is not None:
            # Made, but nobody confirmed its shares: they cannot be shown again.
            self.term.say_both("seal.unconfirmed")
            choice = "remake"
            if not self.unattended:
                choice = self.term.choose(
                    "seal.existing", [("remake", "seal.remake"), ("keep", "seal.keep")], "remake"
                )
            if choice == "keep":
                self.journal.complete("seal", {"mode": _mode_of(existing), "kept": True})
                return
            self._forget_seal()
        mode, threshold, count = self._seal_choice()
        self.journal.note("seal", {"mode": mode, "threshold": threshold, "count": count})
        self.term.say("seal.working")
        shares = appliance.make_seal(self.system, mode, threshold, count)
        for share in shares:
            self.journal.forbid(share)
        self.journal.note("seal", {"made": True})
        self._show_shares(mode, shares, threshold)
        self.shares = shares
        self.journal.complete("seal", {"confirmed": not self.unattended})

    def _forget_seal(self) -> None:
        """Only before the stamp (no account, no record can exist yet)."""
        if self.system.exists(STAMP_FILE) or self.journal.is_done("admin"):
            raise StepFailed("the seal cannot be remade once the appliance holds data",
                             "データ保存後に封印を作り直すことはできません")
        self.system.systemctl("stop", appliance.VAULT_UNIT)
        appliance.wipe_keys(self.system)
        # A vault that opened the old seal stored a keyring wrapped by it.
        database.drop_database(self.system)
        database.create_roles(self.system)
        self.system.migrate(database.OWNER_DSN)
        self.term.say("seal.forgotten")

    def _seal_choice(self) -> tuple[str, int, int]:
        if self.answers is not None:
            mode = self.answers.seal_mode
            if mode == "tpm" and not self.system.has_tpm:
                raise StepFailed(
                    'seal.mode: this machine has no TPM; use "custodian"',
                    'seal.mode: この機械には TPM がありません。"custodian" を指定してください',
                )
            return mode, self.answers.threshold, self.answers.shares
        if self.system.has_tpm:
            mode = self.term.choose(
                "seal.mode", [("tpm", "seal.tpm"), ("custodian", "seal.custodian")], "tpm"
            )
        else:
            self.term.say("seal.no_tpm")
            mode = "custodian"
        while True:
            count = self._ask_valid("seal.count", _whole, "5")
            threshold = self._ask_valid("seal.threshold", _whole, "3")
            try:
                checks.shares(int(threshold), int(count))
                return mode, int(threshold), int(count)
            except BadValue as exc:
                self.term.problem(exc.en, exc.ja)

    def _show_shares(self, mode: str, shares: list[str], threshold: int) -> None:
        intro = "seal.shares_tpm" if mode == "tpm" else "seal.shares_custodian"
        if self.unattended:
            # Progress goes to the journal; the shares and their intro only to the console.
            self.term.say("seal.shares_console", n=len(shares))
            self.term.secret(intro, text(intro, self.term.lang, m=threshold, n=len(shares)))
        else:
            self.term.say(intro, m=threshold, n=len(shares))
        for i, share in enumerate(shares, 1):
            while True:
                self.term.secret("seal.share", f"{i}/{len(shares)} {share}")
                if self.unattended or self.term.confirm("seal.share.confirm", number=i):
                    break
                self.term.say("seal.share.again", number=i)
            self.term.clear()
        if not self.unattended:
            self.term.say("seal.shares_done", m=threshold)

    # --- the vault -----------------------------------------------------------------------------

    def step_vault(self) -> None:
        if self._skip("vault"):
            return
        name = self.journal.answers["hostname"]["hostname"]
        extra = ""
        if self.role in ha.PAIR_ROLES:
            saved = self.journal.answers["role"]["ha"]
            link = saved.get("interface") or self.journal.answers["network"]["interface"]
            extra = ha.render_ha_section(saved["node"], saved["monitor"], int(saved["port"]),
                                         saved["vip"], link)
        restart = appliance.write_config(self.system, name, extra)
        paired_with = None
        if self.role == "standby" and appliance.read_seal(self.system) is None:
            # The root key comes from the primary by the pairing ceremony.
            paired_with = self._pair_standby(self.journal.answers["role"]["ha"]["address"])
        seal = appliance.read_seal(self.system)
        if seal is None:
            raise StepFailed("the root key is not sealed", "ルート鍵が封印されていません")
        appliance.hand_keys_to_vault(self.system)
        if seal.mode == "creds":
            restart |= appliance.install_seal_dropin(self.system)
        self.term.say("vault.starting")
        appliance.start_vault(self.system, restart)
        status = appliance.vault_status(self.system, self.timeouts.vault)
        if status is None:
            raise StepFailed("kura-vault did not start (journalctl -u kura-vault)",
                             "kura-vault が起動しません（journalctl -u kura-vault）")
        if status["sealed"]:
            if seal.mode != "shamir":
                raise StepFailed("kura-vault could not open the TPM seal",
                                 "kura-vault が TPM の封印を開けませんでした")
            self._unseal(int(status.get("shares_needed") or 0))
        self.term.say("vault.open")
        done: dict[str, str] = {"seal_mode": seal.mode}
        if paired_with:
            done["paired_with"] = paired_with
        self.journal.complete("vault", done)

    def _pair_standby(self, address: str) -> str:
        """Show the pairing code on this console and wait on the pairing port
        until the primary's console delivers the envelope (docs/ha-pairing.md).
        An offer that runs out is replaced by a new one: the standby waits for
        as long as it takes. Returns the primary's name."""
        import asyncio

        from kura import pairingserver
        from kura.core import pairing as core_pairing
        from kura.vault import pairing

        keys_dir = self.system.path(KEYS_DIR)
        offered = address if self.pairing_port == PAIRING_PORT else (
            f"{address}:{self.pairing_port}")
        while True:
            now = datetime.datetime.now(datetime.UTC)
            pending = pairing.pending_offer(keys_dir, now)
            if pending is None or pending.offer.address != offered:
                pending = core_pairing.make_offer(self.journal.answers["hostname"]["hostname"],
                                                  offered, now)
                pairing.save_offer(keys_dir, pending)
            self.term.say("ha.pairing_wait", address=offered,
                          fingerprint=pending.offer.fingerprint,
                          until=pending.offer.expires.astimezone().strftime("%H:%M"))
            # The code only on the console, never in the journal.
            self.term.secret("ha.pairing_code", core_pairing.format_code(pending.code))
            server = pairingserver.PairingServer(keys_dir, with_key=self.system.tpm_with_key)
            paired = asyncio.run(pairingserver.serve(
                server, address, self.pairing_port, [address], pending.offer.expires))
            self.term.clear()
            if paired and server.paired is not None:
                self.term.say("ha.paired", primary=server.paired.primary)
                return server.paired.primary
            self.term.say("ha.pairing_again")

    def _unseal(self, need: int) -> None:
        if self.shares:
            for share in self.shares[:need]:
                appliance.unseal(self.system, share)
            return
        if self.unattended:
            raise StepFailed(
                "the vault is sealed: custodians must type their shares on the console",
                "保管庫が封印されています。鍵管理者がコンソールでシェアを入力してください",
            )
        self.term.say("vault.need_shares", m=need)
        while True:
            share = self.term.ask("vault.share")
            if not share:
                continue
            try:
                status = appliance.unseal(self.system, share)
            except KuraError as exc:
                self.term.problem(exc.message_en, exc.message_ja)
                continue
            finally:
                self.term.clear()
            if not status["sealed"]:
                return
            self.term.say("vault.share_taken", have=status.get("shares_entered"), m=need)

    # --- the first DA -----------------------------------------------------------------------

    def step_admin(self) -> None:
        if self._skip("admin"):
            return
        while True:
            if self.answers is not None:
                username, password = self.answers.admin_username, self.answers.admin_password
            else:
                username, password = self._ask_admin()
            self.journal.forbid(password)
            try:
                made = appliance.bootstrap_da(self.system, username, password)
                break
            except KuraError as exc:
                if self.unattended:
                    raise StepFailed(
                        f"admin: {exc.message_en}", f"admin: {exc.message_ja}"
                    ) from None
                self.term.problem(exc.message_en, exc.message_ja)
        self.term.say("admin.made" if made else "admin.exists", username=username)
        self.journal.complete("admin", {"username": username if made else None})

    def _ask_admin(self) -> tuple[str, str]:
        username = self._ask_valid("admin.username", checks.username, "admin")
        while True:
            password = self.term.ask("admin.password", secret=True)
            try:
                checks.password(password, username)
            except BadValue as exc:
                self.term.problem(exc.en, exc.ja)
                continue
            if self.term.ask("admin.password.again", secret=True) == password:
                return username, password
            self.term.say("admin.password.mismatch")

    # --- done -----------------------------------------------------------------------------------

    def step_finish(self) -> None:
        appliance.write_stamp(self.system)
        if self.role in ha.PAIR_ROLES:
            self.system.systemctl("enable", "--now", ha.HASYNC_UNIT)
        if self.role in ("single", "primary"):
            appliance.start_console(self.system)
        self.journal.complete("finish")
        self.term.say("finish.done")


def _interface_name(value: str) -> str:
    value = value.strip()
    if not 0 < len(value) < 16 or "/" in value or " " in value:
        raise BadValue(f"{value!r} is not an interface name",
                       f"{value!r} はインターフェース名ではありません")
    return value


def _whole(value: str) -> int:
    if not value.strip().isdigit():
        raise BadValue(f"{value!r} is not a number", f"{value!r} は数字ではありません")
    return int(value)


def _mode_of(seal: object) -> str:
    return "tpm" if getattr(seal, "mode", "") == "creds" else "custodian"

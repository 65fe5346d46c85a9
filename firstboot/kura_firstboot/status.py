"""The console after set-up: where to point the browser, the certificate's
fingerprint to compare, the vault's state, and a small menu (network,
unseal, reboot, shut down, factory reset).

A factory reset is guarded twice: an Appliance Admin signs in through the
vault (so it is audited and locked out like any sign-in) and the word ERASE
must be typed. It removes the seal, the cluster, /etc/kura, the stamp and
the journal, then reboots into a fresh first boot.
"""

from __future__ import annotations

import shutil

from kura.core.errors import KuraError
from kura_firstboot import appliance, certificate, database, network
from kura_firstboot.errors import FirstbootError, InputTimeout
from kura_firstboot.journal import STAMP_FILE, STATE_FILE, Journal
from kura_firstboot.system import System
from kura_firstboot.terminal import Terminal

RESET_WORD = "ERASE"
REFRESH_SECONDS = 300.0
REFRESH_NOT_OPEN = 10.0  # a vault starting or sealed: show its change soon


def address(system: System, journal: Journal) -> str:
    """The address to browse to: the configured link's first address, else the host name."""
    net = journal.answers.get("network", {})
    name = str(net.get("interface") or "")
    found = network.link_addresses(name) if name else []
    if found:
        ip = found[0]
        return f"[{ip}]" if ":" in ip else ip
    return str(journal.answers.get("hostname", {}).get("hostname") or "kura")


def show(system: System, term: Terminal) -> dict[str, object] | None:
    journal = Journal.load(system)
    name = journal.answers.get("hostname", {}).get("hostname", "kura")
    term.say("status.title", name=name)
    role = journal.answers.get("role", {})
    if role.get("role") == "witness":
        # no vault, no web console: what the data nodes need instead
        term.say("status.witness", code=role.get("witness", {}).get("enrol_code", "-"))
        return None
    term.say("status.url", url=f"https://{address(system, journal)}/")
    term.say("status.fingerprint", fingerprint=certificate.fingerprint(system) or "-")
    status = appliance.vault_status(system)
    if status is None:
        term.say("status.vault.down")
    elif status["sealed"]:
        term.say("status.vault.sealed", have=status.get("shares_entered", 0),
                 m=status.get("shares_needed", "?"))
    else:
        term.say("status.vault.open")
    return status


def screen(system: System, term: Terminal, refresh: float = REFRESH_SECONDS) -> None:
    """Show the status and serve the menu until the terminal closes or the machine goes down."""
    while True:
        status = show(system, term)
        sealed = bool(status and status["sealed"])
        options = [("refresh", "menu.refresh"), ("network", "menu.network")]
        if sealed:
            options.append(("unseal", "menu.unseal"))
        options += [("reboot", "menu.reboot"), ("poweroff", "menu.poweroff"),
                    ("reset", "menu.reset"), ("language", "menu.language")]
        try:
            wait = refresh if status and not sealed else min(refresh, REFRESH_NOT_OPEN)
            choice = term.choose("menu", options, "refresh", timeout=wait)
        except InputTimeout:
            term.write_newline()
            continue
        try:
            if choice == "network":
                show_network(term)
            elif choice == "language":
                chosen = term.choose(
                    "language", [("ja", "language.ja"), ("en", "language.en")], term.lang
                )
                term.lang = "ja" if chosen == "ja" else "en"
            elif choice == "unseal" and status is not None:
                unseal(system, term, int(str(status.get("shares_needed") or 0)))
            elif choice in ("reboot", "poweroff"):
                if term.confirm("menu.sure"):
                    system.systemctl(choice)
                    return
            elif choice == "reset" and factory_reset(system, term):
                return
        except (FirstbootError, KuraError) as exc:
            en, ja = _messages(exc)
            term.error(en, ja)


def show_network(term: Terminal) -> None:
    for i, link in enumerate(network.interfaces(), 1):
        term.say(
            "network.link",
            number=i,
            name=link.name,
            mac=link.mac,
            carrier="yes" if link.carrier else "no",
            addresses=" ".join(link.addresses) or "-",
        )


def unseal(system: System, term: Terminal, need: int) -> None:
    term.say("vault.need_shares", m=need)
    while True:
        share = term.ask("vault.share")
        if not share:
            return
        try:
            status = appliance.unseal(system, share)
        except KuraError as exc:
            term.problem(exc.message_en, exc.message_ja)
            continue
        finally:
            term.clear()
        if not status["sealed"]:
            term.say("vault.open")
            return
        term.say("vault.share_taken", have=status.get("shares_entered"), m=need)


def factory_reset(system: System, term: Terminal) -> bool:
    """True if the machine was reset (and is rebooting)."""
    term.say("reset.warning")
    username = term.ask("reset.username", "admin")
    password = term.ask("reset.password", secret=True)
    try:
        appliance.check_da(system, username, password)
    except KuraError as exc:
        if not (getattr(exc, "detail", {}) or {}).get("totp_required"):
            raise
        appliance.check_da(system, username, password, term.ask("reset.totp"))
    if term.ask("reset.confirm", word=RESET_WORD) != RESET_WORD:
        term.say("reset.cancelled")
        return False
    term.say("reset.working")
    wipe(system)
    system.systemctl("reboot")
    return True


def wipe(system: System) -> None:
    """Everything the first boot made that holds keys, data or settings."""
    for unit in (appliance.POLICY_UNIT, appliance.CONSOLE_UNIT, appliance.VAULT_UNIT):
        system.systemctl("stop", unit)
    database.remove_cluster(system)
    appliance.wipe_keys(system)
    shutil.rmtree(system.path("/etc/kura"), ignore_errors=True)
    system.remove(STAMP_FILE)
    system.remove(STATE_FILE)
    system.systemctl("daemon-reload")


def _messages(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, FirstbootError):
        return exc.en, exc.ja
    assert isinstance(exc, KuraError)
    return exc.message_en, exc.message_ja

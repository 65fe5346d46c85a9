"""First boot as a member of the HA pair: the answers of each role are checked before
anything changes (the enrolment file pinned to the enrol code's CA), kura.toml's [ha]
is what kura.config and kura-hasync read, and the steps make a witness, a primary or a
standby (programs recorded: pg_auto_failover does not run on the build host)."""

from __future__ import annotations

import datetime
import io
import json
import re
import stat
import tomllib
from pathlib import Path

import pytest

from kura import config
from kura.core import formation
from kura.core import witness as core
from kura_firstboot import answers, ha
from kura_firstboot import appliance as appliance_module
from kura_firstboot.errors import AnswersError
from kura_firstboot.journal import STEPS, Journal
from kura_firstboot.terminal import Terminal
from kura_firstboot.wizard import Wizard
from tests.firstboot_support import Recorder, make_system

NOW = datetime.datetime.now(datetime.UTC)
BASE = """
[network]
interface = "ens3"
mode = "static"
address = "192.0.2.11/24"
gateway = "192.0.2.1"
[host]
hostname = "kura-a"
[seal]
mode = "custodian"
[admin]
password = "Kura-first-DA-2026"
"""
NETWORK_DONE = {"interface": "ens3", "mac": "52:54:00:00:00:01", "mode": "static",
                "address": "192.0.2.11/24", "gateway": "192.0.2.1", "dns": [],
                "address_seen": "192.0.2.11"}


@pytest.fixture(scope="module")
def witness() -> tuple[core.Issued, core.EnrolCode, dict[str, str]]:
    ca = core.make_ca("test", NOW)
    return ca, core.EnrolCode("192.0.2.3", 5432, core.ca_pin(ca.cert_pem)), core.new_passwords()


def pair_file(witness: tuple[core.Issued, core.EnrolCode, dict[str, str]], role: str = "primary",
              **overrides: str) -> str:
    ca, code, passwords = witness
    bundle = core.make_bundle(ca, code, "node-a", "192.0.2.11", passwords, NOW)
    values = {"enrol_code": core.encode(code), "enrolment": bundle.to_json(),
              "vip": "192.0.2.10/24", **overrides}
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v != "-")
    return f'role = "{role}"\n' + BASE + "[ha]\n" + body


def test_primary_answers(witness: tuple[core.Issued, core.EnrolCode, dict[str, str]]) -> None:
    given = answers.parse(pair_file(witness))
    assert given.role == "primary" and given.pair is not None
    assert (given.pair.node, given.pair.vip, given.pair.code) == ("node-a", "192.0.2.10/24",
                                                                  witness[1])
    # neither the key nor a password shows in the answers' repr (logs, tracebacks)
    assert "PRIVATE" not in repr(given) and witness[2]["autoctl_node"] not in repr(given)


@pytest.mark.parametrize(("overrides", "field", "says"), [
    ({"enrol_code": "KW1-00000-00000"}, "ha.enrol_code", "mistyped"),
    ({"vip": "192.0.2.10"}, "ha.vip", "prefix"),
    ({"vip": "192.0.2.11/24"}, "ha.vip", "node's own address"),
    ({"vip": "2001:db8::10/64"}, "ha.vip", "IPv4"),
    ({"node": "node-b"}, "ha.node", "for node 'node-a'"),
    ({"enrolment": "{}"}, "ha.enrolment", "not one that kura witness enrol wrote"),
    ({"vip": "-"}, "ha.vip", "needed"),
    ({"interface": "a b"}, "ha.interface", "not an interface name"),
])
def test_bad_pair_answers_name_the_field(
        witness: tuple[core.Issued, core.EnrolCode, dict[str, str]],
        overrides: dict[str, str], field: str, says: str) -> None:
    with pytest.raises(AnswersError) as caught:
        answers.parse(pair_file(witness, **overrides))
    assert caught.value.field == field
    assert says in caught.value.en
    assert caught.value.ja.startswith(field + ": ") and len(caught.value.ja) > len(field) + 3


def test_an_enrolment_file_from_another_witness_is_refused(
        witness: tuple[core.Issued, core.EnrolCode, dict[str, str]]) -> None:
    """The pin: the code from the real witness's screen, the file from an impostor."""
    impostor = core.make_ca("impostor", NOW)
    forged = core.make_bundle(impostor, witness[1], "node-a", "192.0.2.11", witness[2], NOW)
    with pytest.raises(AnswersError) as caught:
        answers.parse(pair_file(witness, enrolment=forged.to_json()))
    assert caught.value.field == "ha.enrolment"
    assert "does not match the enrol code" in caught.value.en
    assert "一致しません" in caught.value.ja


def test_role_sections_belong_to_their_roles(
        witness: tuple[core.Issued, core.EnrolCode, dict[str, str]]) -> None:
    with pytest.raises(AnswersError, match=r"^ha: only for role primary or standby"):
        answers.parse(pair_file(witness, role="single"))
    with pytest.raises(AnswersError, match=r"^ha: needed for role standby"):
        answers.parse('role = "standby"\n' + BASE)
    with pytest.raises(AnswersError, match=r"^witness: only for role witness"):
        answers.parse('role = "single"\n' + BASE + '[witness]\naddress = "192.0.2.3"\n')


def test_witness_answers() -> None:
    assert answers.parse('role = "witness"\n' + BASE).witness_address == "192.0.2.11"
    given = answers.parse('role = "witness"\n' + BASE + '[witness]\naddress = "W.example.jp"\n')
    assert given.witness_address == "w.example.jp"
    dhcp = BASE.replace('mode = "static"\naddress = "192.0.2.11/24"\ngateway = "192.0.2.1"\n',
                        "")
    with pytest.raises(AnswersError, match=r"^witness\.address: needed with DHCP"):
        answers.parse('role = "witness"\n' + dhcp)
    with pytest.raises(AnswersError, match=r"^witness\.address: "):
        answers.parse('role = "witness"\n' + BASE + '[witness]\naddress = "not an address"\n')


def test_single_answers_are_as_before() -> None:
    given = answers.parse(BASE)
    assert (given.role, given.pair, given.witness_address) == ("single", None, None)


def test_ha_section_is_what_kura_hasync_reads() -> None:
    section = ha.render_ha_section("node-a", "192.0.2.3", 5432, "192.0.2.10/24", "ens3")
    text = 'appliance = "kura-a"\n[database]\ndsn = "x"\n[vault]\nsocket = "/run/kura/v"\n' \
           'keys_dir = "/k"\n' + section
    cfg = config.parse(tomllib.loads(text))
    assert cfg.ha is not None
    assert (cfg.ha.node, str(cfg.ha.vip), cfg.ha.interface) == ("node-a", "192.0.2.10/24", "ens3")
    assert cfg.ha.monitor == ("postgres://autoctl_node@192.0.2.3:5432/pg_auto_failover"
                              "?sslmode=verify-full&sslrootcert=/etc/kura-ha/ca.crt"
                              "&passfile=/etc/kura-ha/hasync.pgpass")
    assert cfg.ha.local_dsn == "host=/run/postgresql dbname=postgres user=kura_hasync"
    assert cfg.ha.fence_seconds == formation.FENCE_SECONDS


def test_node_commands_are_the_formations(tmp_path: Path) -> None:
    create, *settings = ha.node_commands("node-a", "192.0.2.11", "192.0.2.3", 5432)
    assert create == formation.create_node(
        ha.PGDATA, "192.0.2.11", "node-a",
        "postgres://autoctl_node@192.0.2.3:5432/pg_auto_failover?sslmode=verify-full"
        "&sslrootcert=/etc/kura-ha/ca.crt", ha.tls_files())
    assert settings == formation.keeper_settings(ha.PGDATA)


def wizard_for(tmp_path: Path, text: str) -> tuple[Wizard, io.StringIO, Recorder]:
    system, recorder = make_system(tmp_path)
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    journal.complete("hostname", {"hostname": "kura-a"})
    journal.complete("time", {"timezone": "Asia/Tokyo", "ntp": []})
    out = io.StringIO()
    return Wizard(system, Terminal(None, out), journal, answers.parse(text)), out, recorder


def test_primary_joins_the_formation(
        tmp_path: Path, witness: tuple[core.Issued, core.EnrolCode, dict[str, str]]) -> None:
    wizard, out, recorder = wizard_for(tmp_path, pair_file(witness))
    system = wizard.system
    recorder.hooks[("runuser", "-u", "postgres", "--", "env", f"PGPASSFILE={ha.PGPASS}",
                    "psql")] = lambda argv, _in: b"f\n"
    wizard.step_role()
    key = system.path(ha.KEY_FILE)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(system.path(ha.PGPASS).stat().st_mode) == 0o600
    assert ha.passwords(system) == witness[2]
    saved = json.loads(system.path("/var/lib/kura/firstboot/state.json").read_text())
    assert saved["answers"]["role"]["ha"]["node"] == "node-a"
    for secret in [*witness[2].values()]:
        assert secret not in system.path("/var/lib/kura/firstboot/state.json").read_text()
    # tls (self-signed) as for any appliance, then the node instead of Debian's cluster
    wizard.step_tls()
    wizard.step_database()
    commands = recorder.commands()
    assert not any(c.startswith("pg_createcluster") for c in commands)
    assert any("pg_autoctl create postgres" in c and "--name node-a" in c for c in commands)
    assert "systemctl enable --now kura-keeper.service" in commands
    everything = recorder.everything()
    replicator = witness[2][formation.REPLICATION_USER]
    assert f"ALTER ROLE pgautofailover_replicator PASSWORD '{replicator}'" in everything
    assert not any(replicator in c for c in commands)  # on standard input only
    hba = system.path(f"{ha.PGDATA}/pg_hba.conf").read_text()
    assert "local   kura   kura_vault   peer map=kura" in hba and ha.HASYNC_HBA in hba
    assert "[step]" not in out.getvalue()


class Primary:
    """The primary's side of the pairing, as its console and vault do it: fetch the
    standby's offer from its pairing port, make the envelope with the code read off
    the standby's screen, deliver it."""

    def __init__(self, root: bytes) -> None:
        self.root = root

    def pair(self, port: int, screen: io.StringIO, timeout: float = 20) -> dict[str, object]:
        import ssl
        import time
        import urllib.request

        from kura import pairingserver
        from kura.core import pairing as core_pairing
        from kura.core.keys import root_check_value

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while True:
            shown = re.search(r"\[ha.pairing_code\] (\d{4} \d{4} \d{4})", screen.getvalue())
            try:
                if shown:
                    url = pairingserver.url("127.0.0.1", port, pairingserver.OFFER_PATH)
                    with urllib.request.urlopen(  # noqa: S310 (https, built here)
                            url, context=context, timeout=5) as answer:
                        offer = core_pairing.Offer.from_json(json.loads(answer.read()))
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, screen.getvalue()
            time.sleep(0.1)
        params = core_pairing.PairingParams(primary="kura-primary", seal_mode="host",
                                            shares=None, monitor_uri="", ca_certificate="")
        envelope = core_pairing.make_envelope(self.root, offer, shown.group(1), params,
                                              root_check_value(self.root), NOW)
        request = urllib.request.Request(  # noqa: S310 (https, built here)
            pairingserver.url("127.0.0.1", port, pairingserver.ENVELOPE_PATH),
            data=json.dumps(envelope.to_json()).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(  # noqa: S310 (https, built here)
                request, context=context, timeout=10) as answer:
            body: dict[str, object] = json.loads(answer.read())
        return body


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_standby_shows_its_code_and_is_paired_at_first_boot(
        tmp_path: Path, witness: tuple[core.Issued, core.EnrolCode, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from kura.core.keys import new_root_key
    from kura.vault import sealing

    wizard, out, recorder = wizard_for(tmp_path, pair_file(witness, role="standby"))
    secret = io.StringIO()
    wizard.term = Terminal(None, out, secret_out=secret)
    system = wizard.system
    for step in ("role", "tls", "database", "seal"):
        getattr(wizard, f"step_{step}")()
    # The standby waits on loopback here (its own address on the appliance).
    wizard.journal.answers["role"]["ha"]["address"] = "127.0.0.1"
    wizard.pairing_port = free_port()
    # kura-vault itself is the boundary: its start is recorded, its answer given.
    monkeypatch.setattr(appliance_module, "vault_status",
                        lambda _system, _timeout=0.0: {"sealed": False, "role": "standby"})
    failed: list[BaseException] = []

    def vault_step() -> None:
        try:
            wizard.step_vault()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=vault_step, daemon=True)
    thread.start()
    root = new_root_key()
    answer = Primary(root).pair(wizard.pairing_port, secret)
    thread.join(20)
    assert not thread.is_alive() and not failed, failed
    assert answer["paired"] is True and answer["standby_of"] == "kura-primary"
    assert sealing.load_host(system.path("/var/lib/kura-keys")) == root
    # The code was on the console only: not in the journal's output nor its state.
    code = re.search(r"\[ha.pairing_code\] (\d{4} \d{4} \d{4})", secret.getvalue())
    assert code
    assert code.group(1) not in out.getvalue()
    assert code.group(1).replace(" ", "") not in system.path(
        "/var/lib/kura/firstboot/state.json").read_text().replace(" ", "")
    assert "[ha.pairing_wait]" in out.getvalue() and "[ha.paired]" in out.getvalue()
    assert "systemctl restart kura-vault.service" in recorder.commands()  # kura.toml is new
    assert wizard.journal.answers["vault"]["paired_with"] == "kura-primary"

    for step in ("admin", "finish"):
        getattr(wizard, f"step_{step}")()
    assert wizard.journal.next_step is None
    commands = recorder.commands()
    assert "systemctl enable --now kura-keeper.service" in commands
    assert "systemctl enable --now kura-hasync.service" in commands
    assert not any("psql" in c for c in commands)  # its database comes by base backup
    cfg = config.load(str(system.path("/etc/kura/kura.toml")))
    assert cfg.ha is not None and cfg.ha.node == "node-a" and cfg.ha.interface == "ens3"
    assert "[role.skip]" in out.getvalue()
    assert wizard.journal.answers["seal"]["skipped"] == "standby"


def test_the_node_is_made_once_and_an_unfinished_create_resumed(
        tmp_path: Path, witness: tuple[core.Issued, core.EnrolCode, dict[str, str]]) -> None:
    wizard, _out, recorder = wizard_for(tmp_path, pair_file(witness, role="standby"))
    system = wizard.system
    wizard.step_role()
    saved = wizard.journal.answers["role"]["ha"]

    def creates() -> int:
        return sum("pg_autoctl create postgres" in c for c in recorder.commands())
    ha.setup_node(system, "standby", saved)
    assert creates() == 1
    system.path(f"{ha.PGDATA}/PG_VERSION").parent.mkdir(parents=True, exist_ok=True)
    system.path(f"{ha.PGDATA}/PG_VERSION").write_text("17\n")
    system.path(ha.INIT_FILE).parent.mkdir(parents=True)
    system.path(ha.INIT_FILE).write_text("")
    ha.setup_node(system, "standby", saved)  # pg_autoctl's own create resumes
    assert creates() == 2
    system.path(ha.INIT_FILE).unlink()
    ha.setup_node(system, "standby", saved)  # made: only the settings again
    assert creates() == 2


def test_witness_runs_kura_witness_and_nothing_else(tmp_path: Path) -> None:
    wizard, out, recorder = wizard_for(tmp_path, 'role = "witness"\n' + BASE)
    code = "KW1-ABCDE"
    recorder.hooks[("kura", "witness", "enrol-code")] = lambda argv, _in: code.encode() + b"\n"
    for step in STEPS[3:]:
        getattr(wizard, f"step_{step}")()
    commands = recorder.commands()
    assert commands[0] == "kura witness init --address 192.0.2.11"
    assert "systemctl enable --now kura-witness.service" in commands
    assert not any("postgresql@" in c or "kura-vault" in c or "kura-console" in c
                   for c in commands)
    assert f"[witness.code] Enrol code: {code}" in out.getvalue()
    assert wizard.journal.answers["role"]["witness"]["enrol_code"] == code
    assert wizard.journal.answers["database"]["skipped"] == "witness"


def test_interactive_pair_role_asks_again_until_right(
        tmp_path: Path, witness: tuple[core.Issued, core.EnrolCode, dict[str, str]]) -> None:
    """On the console: a mistyped code, an enrolment file from another witness and the
    node's own address as VIP are each refused in both languages and asked again."""
    import os

    ca, code, passwords = witness
    good = core.make_bundle(ca, code, "node-a", "192.0.2.11", passwords, NOW).to_json()
    forged = core.make_bundle(core.make_ca("impostor", NOW), code, "node-a", "192.0.2.11",
                              passwords, NOW).to_json()
    text = core.encode(code)
    typo = text[:-1] + ("0" if text[-1] != "0" else "1")
    lines = ["primary", typo, text, *forged.splitlines(), "", *good.splitlines(), "",
             "192.0.2.11/24", "192.0.2.10/24", ""]
    read, write = os.pipe()
    os.write(write, ("\n".join(lines) + "\n").encode())
    os.close(write)
    system, _recorder = make_system(tmp_path)
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    journal.complete("hostname", {"hostname": "kura-a"})
    journal.complete("time", {"timezone": "Asia/Tokyo", "ntp": []})
    out = io.StringIO()
    wizard = Wizard(system, Terminal(read, out, "ja"), journal)
    try:
        wizard.step_role()
    finally:
        os.close(read)
    said = out.getvalue()
    assert said.count("[ha.code]") == 2 and "検査値が一致しません" in said
    assert said.count("[ha.enrolment]") == 2 and "登録コードと一致しません" in said
    assert said.count("[ha.vip]") == 2 and "ノード自身のアドレス" in said
    assert journal.answers["role"]["ha"] == {
        "node": "node-a", "address": "192.0.2.11", "monitor": "192.0.2.3", "port": 5432,
        "pin": code.pin.hex(), "vip": "192.0.2.10/24", "interface": "ens3"}
    assert ha.passwords(system) == passwords


def test_a_witness_status_screen_shows_the_enrol_code(tmp_path: Path) -> None:
    from kura_firstboot import status

    system, _recorder = make_system(tmp_path)
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    journal.complete("hostname", {"hostname": "kura-w"})
    journal.complete("time", {"timezone": "Asia/Tokyo", "ntp": []})
    journal.complete("role", {"role": "witness",
                              "witness": {"address": "192.0.2.3", "enrol_code": "KW1-ABCDE"}})
    out = io.StringIO()
    assert status.show(system, Terminal(None, out)) is None
    said = out.getvalue()
    assert "[status.witness]" in said and "KW1-ABCDE" in said
    assert "status.url" not in said and "status.vault" not in said

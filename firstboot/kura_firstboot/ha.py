"""First boot as a member of the HA pair: a data node (primary or standby) joins the
witness's formation; a witness makes it (docs/ha.md, "Setting up a pair").

A data node is given the witness's *enrol code* (typed from the witness's screen:
monitor address and the CA's pin) and its *enrolment file* (from ``kura witness
enrol``: its certificate and key, the formation's passwords). The file is refused
unless its CA matches the code's pin, so the node never trusts another monitor;
every connection afterwards is TLS verify-full against that CA.

Pure parts (checking answers, rendering kura.toml's ``[ha]``, the command lines) are
functions of their inputs; ``install_files``, ``setup_node`` and ``setup_witness``
change the machine through :class:`System`. Each is safe to run again.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from kura.core import formation
from kura.core import witness as core
from kura_firstboot import database
from kura_firstboot.errors import AnswersError, BadValue, StepFailed
from kura_firstboot.system import System

PAIR_ROLES = ("primary", "standby")
HA_DIR = "/etc/kura-ha"  # not under /etc/kura (0750 root:kura): postgres reads these
CA_FILE = f"{HA_DIR}/ca.crt"
CERT_FILE = f"{HA_DIR}/node.crt"
KEY_FILE = f"{HA_DIR}/node.key"
HASYNC_PGPASS = f"{HA_DIR}/hasync.pgpass"
PGDATA = f"/var/lib/postgresql/{formation.PG_VERSION}/kura-ha"
PGPASS = "/var/lib/postgresql/.pgpass"
# pg_autoctl keeps this file while a `create` is unfinished and resumes from it when run
# again (XDG_DATA_HOME of the postgres user)
INIT_FILE = f"/var/lib/postgresql/.local/share/pg_autoctl{PGDATA}/pg_autoctl.init"
KEEPER_UNIT = "kura-keeper.service"
HASYNC_UNIT = "kura-hasync.service"
WITNESS_UNIT = "kura-witness.service"
HASYNC_USER = "kura-hasync"
HASYNC_ROLE = "kura_hasync"
HASYNC_DSN = f"host=/run/postgresql dbname=postgres user={HASYNC_ROLE}"
PRIMARY_WAIT = 120.0  # seconds for the keeper to make this node the formation's primary


@dataclass(frozen=True)
class PairAnswers:
    """A data node's answers. The bundle holds the key and passwords: never journalled."""

    code: core.EnrolCode
    bundle: core.Bundle = field(repr=False)
    vip: str  # "192.0.2.10/24"
    interface: str | None = None  # default: the network step's link

    @property
    def node(self) -> str:
        return self.bundle.node

    def to_json(self) -> dict[str, Any]:
        """What the journal keeps: nothing secret."""
        return {"node": self.node, "address": self.bundle.address,
                "monitor": self.code.address, "port": self.code.port,
                "pin": self.code.pin.hex(), "vip": self.vip, "interface": self.interface}


# --- checking answers (pure) ----------------------------------------------------------


def check_vip(value: object, node_address: str = "", monitor: str = "") -> str:
    """The floating address with its prefix, IPv4 (kura-hasync moves IPv4 only), not a
    node's own address and not a network or broadcast address."""
    try:
        if not isinstance(value, str):
            raise ValueError
        vip = ipaddress.IPv4Interface(value.strip())
    except ValueError:
        raise BadValue(f"{value!r} is not an IPv4 address with its prefix (e.g. 192.0.2.10/24)",
                       f"{value!r} は接頭辞長付きの IPv4 アドレスではありません"
                       "（例 192.0.2.10/24）") from None
    if "/" not in str(value) or vip.network.prefixlen >= 31 or vip.ip in (
            vip.network.network_address, vip.network.broadcast_address):
        raise BadValue(f"{value} needs a prefix of /30 or wider and a host address",
                       f"{value} には /30 以下の接頭辞長とホストアドレスが必要です")
    if str(vip.ip) in (node_address, monitor):
        raise BadValue(f"{vip.ip} is a node's own address; the floating address must be free",
                       f"{vip.ip} はノード自身のアドレスです。浮動アドレスには未使用のものを")
    return str(vip)


def check_code(value: object) -> core.EnrolCode:
    if not isinstance(value, str):
        raise BadValue("must be text", "文字列を指定してください")
    try:
        return core.decode(value)
    except core.EnrolError as exc:
        raise BadValue(exc.message_en, exc.message_ja) from None


def encode_code(code: core.EnrolCode) -> str:
    return core.encode(code)


def check_bundle(text: str, code: core.EnrolCode, now: datetime.datetime) -> core.Bundle:
    try:
        return core.read_bundle(text, code, now)
    except core.EnrolError as exc:
        raise BadValue(exc.message_en, exc.message_ja) from None


_PAIR_KEYS = frozenset({"enrol_code", "enrolment", "node", "vip", "interface"})
_WITNESS_KEYS = frozenset({"address"})


def parse_pair(section: dict[str, Any], now: datetime.datetime) -> PairAnswers:
    """``[ha]`` of the answers file for role primary or standby."""
    for key in ("enrol_code", "enrolment", "vip"):
        if key not in section:
            raise AnswersError(f"ha.{key}", "needed for role primary or standby",
                               "role が primary か standby のときは必須です")
    for key in section:
        if key not in _PAIR_KEYS:
            raise AnswersError(f"ha.{key}", "unknown setting (misspelt?)",
                               "不明な設定です（綴りの誤り？）")
    try:
        code = check_code(section["enrol_code"])
    except BadValue as exc:
        raise AnswersError("ha.enrol_code", exc.en, exc.ja) from None
    text = section["enrolment"]
    if not isinstance(text, str):
        raise AnswersError("ha.enrolment", "must be the enrolment file's text",
                           "登録ファイルの内容（文字列）を指定してください")
    try:
        bundle = check_bundle(text, code, now)
    except BadValue as exc:
        raise AnswersError("ha.enrolment", exc.en, exc.ja) from None
    if "node" in section and section["node"] != bundle.node:
        raise AnswersError("ha.node", f"the enrolment file is for node {bundle.node!r}",
                           f"登録ファイルはノード {bundle.node!r} 用です")
    try:
        vip = check_vip(section["vip"], bundle.address, code.address)
    except BadValue as exc:
        raise AnswersError("ha.vip", exc.en, exc.ja) from None
    interface = section.get("interface")
    if interface is not None and (not isinstance(interface, str) or not 0 < len(interface) < 16
                                  or "/" in interface or " " in interface):
        raise AnswersError("ha.interface", "not an interface name",
                           "インターフェース名ではありません")
    return PairAnswers(code, bundle, vip, interface)


def check_witness_address(value: object) -> str:
    if isinstance(value, str):
        text = value.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            if core._NAME.match(text):
                return text.lower()
    raise BadValue(f"{value!r} is not an address or host name",
                   f"{value!r} はアドレスでもホスト名でもありません")


def parse_witness(section: dict[str, Any], network_address: str | None) -> str:
    """``[witness] address``; default the static address of ``[network]``."""
    for key in section:
        if key not in _WITNESS_KEYS:
            raise AnswersError(f"witness.{key}", "unknown setting (misspelt?)",
                               "不明な設定です（綴りの誤り？）")
    if "address" not in section:
        if network_address is None:
            raise AnswersError("witness.address",
                               "needed with DHCP: the data nodes must reach a fixed address",
                               "DHCP のときは必須です"
                               "（データノードが固定のアドレスで接続するため）")
        return network_address.split("/")[0]
    try:
        return check_witness_address(section["address"])
    except BadValue as exc:
        raise AnswersError("witness.address", exc.en, exc.ja) from None


def check_role_sections(role: str, raw: dict[str, Any]) -> None:
    """``[ha]`` only with a data node's role, ``[witness]`` only with witness."""
    if "ha" in raw and role not in PAIR_ROLES:
        raise AnswersError("ha", "only for role primary or standby",
                           "role が primary か standby のときだけ指定できます")
    if "witness" in raw and role != "witness":
        raise AnswersError("witness", "only for role witness",
                           "role が witness のときだけ指定できます")
    if role in PAIR_ROLES and "ha" not in raw:
        raise AnswersError("ha", f"needed for role {role}", f"role が {role} のときは必須です")


# --- rendering (pure) -------------------------------------------------------------------


def hasync_monitor_uri(monitor: str, port: int) -> str:
    """kura-hasync's connection to the monitor: verify-full against the pinned CA, the
    password from its own 0600 file."""
    code = core.EnrolCode(monitor, port, b"\0" * core.PIN_BYTES)
    return code.monitor_uri(CA_FILE) + f"&passfile={HASYNC_PGPASS}"


def render_ha_section(node: str, monitor: str, port: int, vip: str, interface: str) -> str:
    """kura.toml's ``[ha]`` (kura.config.HaConfig) for this node."""
    values = {"node": node, "monitor": hasync_monitor_uri(monitor, port),
              "local_dsn": HASYNC_DSN, "vip": vip, "interface": interface,
              "formation": formation.FORMATION}
    return "\n[ha]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def tls_files() -> formation.TlsFiles:
    return formation.TlsFiles(CA_FILE, CERT_FILE, KEY_FILE)


def node_commands(node: str, address: str, monitor: str, port: int) -> list[list[str]]:
    """pg_autoctl create postgres and the keeper's timers, as postgres."""
    uri = core.EnrolCode(monitor, port, b"\0" * core.PIN_BYTES).monitor_uri(CA_FILE)
    return [formation.create_node(PGDATA, address, node, uri, tls_files()),
            *formation.keeper_settings(PGDATA)]


def primary_sql(passwords: dict[str, str]) -> str:
    """On the first primary, before the standby's base backup copies it all: the
    formation's passwords, the PostgreSQL timers, no JIT (MemoryDenyWriteExecute= in
    the keeper's unit) and kura-hasync's account."""
    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"
    grants = "".join(f"ALTER ROLE {user} PASSWORD {literal(passwords[user])};"
                     for user in (formation.REPLICATION_USER, formation.HEALTH_USER))
    return (grants + "ALTER SYSTEM SET jit = 'off';" + formation.primary_settings_sql()
            + f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
              f"'{HASYNC_ROLE}') THEN CREATE ROLE {HASYNC_ROLE} LOGIN IN ROLE pg_monitor; "
              "END IF; END$$;")


HASYNC_HBA = f"local   postgres   {HASYNC_ROLE}   peer map={database.IDENT_MAP}"
HASYNC_IDENT = f"{database.IDENT_MAP}   {HASYNC_USER}   {HASYNC_ROLE}"


def render_hba(current: str) -> str:
    text = database.render_hba(formation.secure_hba(current))
    return text.replace(database.HBA_END, f"{HASYNC_HBA}\n{database.HBA_END}", 1)


def render_ident(current: str) -> str:
    text = database.render_ident(current)
    if " ".join(HASYNC_IDENT.split()) not in {" ".join(x.split()) for x in text.splitlines()}:
        text += HASYNC_IDENT + "\n"
    return text


# --- changing the machine --------------------------------------------------------------


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", "env", f"PGPASSFILE={PGPASS}", *argv]


def install_files(system: System, pair: PairAnswers) -> None:
    """The node's TLS files and password files, in their places with their modes (the
    only copy of the secrets after the answers are gone)."""
    uid, gid = system.user("postgres")
    system.make_dir(HA_DIR, 0o755, (0, 0))
    system.write_file(CA_FILE, pair.bundle.ca_pem, 0o644, (0, 0))
    system.write_file(CERT_FILE, pair.bundle.cert_pem, 0o644, (0, 0))
    system.write_file(KEY_FILE, pair.bundle.key_pem, 0o600, (uid, gid))
    system.write_file(PGPASS, core.pgpass(pair.bundle.passwords), 0o600, (uid, gid))
    try:
        owner = system.user(HASYNC_USER)
    except KeyError:
        owner = (0, 0)
    monitor_only = {formation.MONITOR_USER: pair.bundle.passwords[formation.MONITOR_USER]}
    system.write_file(HASYNC_PGPASS, core.pgpass(monitor_only), 0o600, owner)


def passwords(system: System) -> dict[str, str]:
    """The formation's passwords back from the postgres user's .pgpass (after a resume)."""
    found = {}
    for line in (system.read_text(PGPASS) or "").splitlines():
        parts = line.replace("\\\\", "\0").replace("\\:", "\1").split(":")
        if len(parts) == 5:
            found[parts[3]] = parts[4].replace("\1", ":").replace("\0", "\\")
    return found


def _wait_primary(system: System, timeout: float) -> None:
    """Until this node's PostgreSQL answers and is not in recovery."""
    deadline = system.clock() + timeout
    while True:
        with contextlib.suppress(Exception):  # not up yet: any failure means "wait"
            out = system.run(*_as_postgres("psql", "-X", "-At", "-d", "postgres", "-c",
                                           "SELECT pg_is_in_recovery()"))
            if out.strip() == b"f":
                return
        if system.clock() >= deadline:
            raise StepFailed(
                f"this node did not become the formation's primary within {timeout:.0f} s "
                "(is the witness running and reachable?)",
                f"{timeout:.0f} 秒以内にプライマリになりませんでした"
                "（ウィットネスが動作し、到達できますか？）")
        system.sleep(1.0)


def setup_node(system: System, role: str, saved: dict[str, Any]) -> list[int]:
    """The database step of a data node: pg_autoctl's node instead of Debian's cluster.
    The primary gets Kura's roles, database and schema; the standby copies them all by
    its base backup. Returns the schema versions applied (none on a standby)."""
    uid, gid = system.user("postgres")
    system.make_dir(f"/var/lib/postgresql/{formation.PG_VERSION}", 0o755, (uid, gid))
    commands = node_commands(saved["node"], saved["address"], saved["monitor"],
                             int(saved["port"]))
    if not system.exists(f"{PGDATA}/PG_VERSION") or system.exists(INIT_FILE):
        system.run(*_as_postgres(*commands[0]))  # new, or cut short by a power cut
    for command in commands[1:]:
        system.run(*_as_postgres(*command))
    system.systemctl("enable", "--now", KEEPER_UNIT)
    if role != "primary":
        return []
    _wait_primary(system, PRIMARY_WAIT)
    database.psql(system, primary_sql(passwords(system)), "postgres")
    for name, render in (("pg_hba.conf", render_hba), ("pg_ident.conf", render_ident)):
        path = f"{PGDATA}/{name}"
        system.write_file(path, render(system.read_text(path) or ""), 0o600, (uid, gid))
    database.psql(system, "SELECT pg_reload_conf();", "postgres")
    database.create_roles(system)
    applied = system.migrate(database.OWNER_DSN)
    # The standby's base backup starts with a spread checkpoint; with the schema's pages
    # still dirty it took 100 s in tests/test_witness_node.py, with this a few seconds.
    database.psql(system, "CHECKPOINT;", "postgres")
    return applied


def setup_witness(system: System, address: str) -> str:
    """``kura witness init`` (once) and the monitor's unit; returns the enrol code."""
    if not system.exists("/var/lib/kura-witness/witness.json"):
        system.run("kura", "witness", "init", "--address", address)
    system.systemctl("enable", "--now", WITNESS_UNIT)
    return system.run("kura", "witness", "enrol-code", "-q").decode().strip()

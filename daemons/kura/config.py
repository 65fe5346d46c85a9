"""Kura's configuration: one TOML file (``--config`` or $KURA_CONFIG), read once
into frozen objects. Nothing deeper in the code reads the environment.

    appliance = "kura-dev"
    [database]
    dsn = "host=/run/kura/pg dbname=kura user=kura_vault password=..."
    owner_dsn = "..."          # optional: migrations are applied at start-up
    [vault]
    socket = "/run/kura/vault.sock"
    keys_dir = "/var/lib/kura-keys"
    allowed_uids = [0]         # who may connect (the vault's own uid always may)
    admin_uids = [0]           # who may create the first DA
    policy_uids = []           # kura-policy's uid: the agents' service operations
    [console]
    listen = "127.0.0.1"
    port = 8443
    cert = "/etc/kura/tls/cert.pem"
    key = "/etc/kura/tls/key.pem"
    webui = "/usr/share/kura/webui"   # optional: the console's templates and catalogs
    [ha]                       # optional: absent on a single appliance (see HaConfig)
    node = "node_a"
    vip = "192.0.2.10/24"
    interface = "eth0"
    local_dsn = "host=/run/postgresql dbname=postgres user=kura_hasync"
    monitor = "postgres://autoctl_node@witness:5432/pg_auto_failover"  # or pg_autoctl_config
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kura.core.errors import KuraError
from kura.core.formation import FENCE_SECONDS


class ConfigError(KuraError):
    """The configuration file is missing or wrong."""

    code = "config"
    status = 500
    ja = "設定ファイルが正しくありません。"
    en = "The configuration file is wrong."


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str
    owner_dsn: str = ""
    pool_min: int = 2
    pool_max: int = 16


@dataclass(frozen=True)
class VaultConfig:
    socket: Path
    keys_dir: Path
    allowed_uids: frozenset[int] = frozenset({0})
    admin_uids: frozenset[int] = frozenset({0})
    # kura-policy's uid: the only peer the agents' service operations answer
    # (docs/agents.md); empty: none.
    policy_uids: frozenset[int] = frozenset()
    # The SA's policy (audit_checkpoint_seconds, default 5) sets how often the
    # chain's head is signed; a value here overrides it (tests, benchmarks).
    checkpoint_seconds: float | None = None
    checkpoint_entries: int = 1000
    integrity_sweep_seconds: float = 60.0  # a sweep of the chain (vault.integrity)
    integrity_sweep_window: int = 10_000  # older entries a sweep recomputes
    # Check before every append that the database still extends the trusted
    # head. Only the benchmark turns it off, to measure what it costs.
    audit_head_check: bool = True
    credentials_dir: Path | None = None  # $CREDENTIALS_DIRECTORY, from systemd

    def local_overrides(self) -> dict[str, object]:
        """The settings of kura.toml that weaken what the SA's policy or the
        design sets. Root can write them without any SA, so the vault records
        them in every ``vault.unseal`` entry: an SA reading the log sees them."""
        found: dict[str, object] = {}
        if self.checkpoint_seconds is not None:
            found["checkpoint_seconds"] = self.checkpoint_seconds
        if not self.audit_head_check:
            found["audit_head_check"] = False
        return found


@dataclass(frozen=True)
class ConsoleConfig:
    listen: str = "127.0.0.1"
    port: int = 8443
    cert: Path | None = None
    key: Path | None = None
    vault_connections: int = 16
    max_body_bytes: int = 1 << 20
    max_import_bytes: int = 32 << 20
    max_upload_bytes: int = 10 << 20  # one document image or PDF on the collection form
    webui: Path | None = None  # templates, static files, catalogs (default: the installed ones)


@dataclass(frozen=True)
class HaConfig:
    """kura-hasync's settings, the ``[ha]`` section. ``monitor``, ``node`` and
    ``formation`` may instead be read from the keeper's own pg_autoctl.cfg
    (``pg_autoctl_config``); explicit keys win."""

    node: str  # this node's name at the monitor (pg_autoctl --name)
    monitor: str  # the monitor's connection string (pg_autoctl.cfg [pg_autoctl] monitor)
    local_dsn: str  # this node's PostgreSQL; the role needs pg_monitor (pg_stat_replication)
    vip: ipaddress.IPv4Interface  # the floating address with its prefix
    interface: str
    formation: str = "default"
    # Seconds without the monitor and without a streaming standby before a
    # primary fences itself (drops the VIP): set it to the keeper's
    # timeout.network_partition_timeout (kura.core.formation), or lower.
    fence_seconds: float = FENCE_SECONDS
    poll_seconds: float = 2.0  # the safety poll of the monitor between notifications
    arping: str = "arping"  # iputils-arping; a bare name is looked up on PATH
    # Where the role is written for the vault (JSON), rewritten every second;
    # default /run/kura-hasync/status.json (the unit's RuntimeDirectory=).
    status_file: Path | None = None
    # Where kura-hasync listens for the vault's planned switchover (group kura,
    # 0660); default /run/kura-hasync/control.sock.
    control_socket: Path | None = None


@dataclass(frozen=True)
class Config:
    appliance: str
    database: DatabaseConfig
    vault: VaultConfig
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    ha: HaConfig | None = None
    path: Path | None = None


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table", f"[{name}] は表でなければなりません。")
    return value


def parse(
    raw: dict[str, Any], path: Path | None = None, env: dict[str, str] | None = None
) -> Config:
    env = env if env is not None else {}
    try:
        db = _section(raw, "database")
        vault = _section(raw, "vault")
        console = _section(raw, "console")
        creds = env.get("CREDENTIALS_DIRECTORY")
        return Config(
            appliance=str(raw.get("appliance", "kura")),
            database=DatabaseConfig(
                dsn=str(db["dsn"]),
                owner_dsn=str(db.get("owner_dsn", "")),
                pool_min=int(db.get("pool_min", 2)),
                pool_max=int(db.get("pool_max", 16)),
            ),
            vault=VaultConfig(
                socket=Path(vault["socket"]),
                keys_dir=Path(vault["keys_dir"]),
                allowed_uids=frozenset(int(u) for u in vault.get("allowed_uids", [0])),
                admin_uids=frozenset(int(u) for u in vault.get("admin_uids", [0])),
                policy_uids=frozenset(int(u) for u in vault.get("policy_uids", [])),
                checkpoint_seconds=(
                    float(vault["checkpoint_seconds"]) if "checkpoint_seconds" in vault else None
                ),
                checkpoint_entries=int(vault.get("checkpoint_entries", 1000)),
                integrity_sweep_seconds=float(vault.get("integrity_sweep_seconds", 60)),
                integrity_sweep_window=int(vault.get("integrity_sweep_window", 10_000)),
                audit_head_check=bool(vault.get("audit_head_check", True)),
                credentials_dir=Path(creds) if creds else None,
            ),
            console=ConsoleConfig(
                listen=str(console.get("listen", "127.0.0.1")),
                port=int(console.get("port", 8443)),
                cert=Path(console["cert"]) if "cert" in console else None,
                key=Path(console["key"]) if "key" in console else None,
                vault_connections=int(console.get("vault_connections", 16)),
                max_body_bytes=int(console.get("max_body_bytes", 1 << 20)),
                max_import_bytes=int(console.get("max_import_bytes", 32 << 20)),
                max_upload_bytes=int(console.get("max_upload_bytes", 10 << 20)),
                webui=Path(console["webui"]) if "webui" in console else None,
            ),
            ha=parse_ha(_section(raw, "ha"), env) if "ha" in raw else None,
            path=path,
        )
    except KeyError as exc:
        raise ConfigError(f"missing setting {exc}", f"設定 {exc} がありません。") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad setting: {exc}", f"設定の値が正しくありません: {exc}") from exc


def _pg_autoctl_settings(path: Path) -> dict[str, str]:
    """monitor, name and formation from a keeper's pg_autoctl.cfg (INI)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open() as f:
            parser.read_file(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          f"{path} を読めません: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise ConfigError(f"{path} is not a pg_autoctl configuration",
                          f"{path} は pg_autoctl の設定ではありません。") from exc
    if not parser.has_section("pg_autoctl"):
        return {}
    section = parser["pg_autoctl"]
    return {key: section[key] for key in ("monitor", "name", "formation") if key in section}


# kura-hasync's RuntimeDirectory=. Fixed, not $RUNTIME_DIRECTORY: the vault
# reads the same [ha] section from its own unit, whose runtime folder differs.
HASYNC_RUNTIME = Path("/run/kura-hasync")


def _runtime_path(ha: dict[str, Any], key: str, name: str) -> Path:
    """Explicit, else in kura-hasync's runtime folder."""
    return Path(str(ha[key])) if key in ha else HASYNC_RUNTIME / name


def parse_ha(ha: dict[str, Any], env: dict[str, str] | None = None) -> HaConfig:
    keeper: dict[str, str] = {}
    if "pg_autoctl_config" in ha:
        keeper = _pg_autoctl_settings(Path(str(ha["pg_autoctl_config"])))
    node = str(ha.get("node", keeper.get("name", "")))
    monitor = str(ha.get("monitor", keeper.get("monitor", "")))
    if not node or not monitor:
        raise ConfigError(
            "[ha] needs node and monitor (or pg_autoctl_config naming them)",
            "[ha] には node と monitor（またはそれを含む pg_autoctl_config）が必要です。",
        )
    try:
        vip = ipaddress.ip_interface(str(ha["vip"]))
    except ValueError as exc:
        raise ConfigError(f"[ha] vip: {exc}", f"[ha] vip が正しくありません: {exc}") from exc
    if not isinstance(vip, ipaddress.IPv4Interface) or "/" not in str(ha["vip"]):
        raise ConfigError(
            "[ha] vip must be an IPv4 address with its prefix, e.g. 192.0.2.10/24",
            "[ha] vip は接頭辞長付きの IPv4 アドレスで指定してください（例 192.0.2.10/24）。",
        )
    fence, poll = float(ha.get("fence_seconds", FENCE_SECONDS)), float(ha.get("poll_seconds", 2))
    if fence <= 0 or poll <= 0:
        raise ConfigError("[ha] fence_seconds and poll_seconds must be positive",
                          "[ha] fence_seconds と poll_seconds は正の数にしてください。")
    return HaConfig(
        node=node,
        monitor=monitor,
        local_dsn=str(ha["local_dsn"]),
        vip=vip,
        interface=str(ha["interface"]),
        formation=str(ha.get("formation", keeper.get("formation", "default"))),
        fence_seconds=fence,
        poll_seconds=poll,
        arping=str(ha.get("arping", "arping")),
        status_file=_runtime_path(ha, "status_file", "status.json"),
        control_socket=_runtime_path(ha, "control_socket", "control.sock"),
    )


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the configuration named by ``path`` or $KURA_CONFIG."""
    chosen = path or os.environ.get("KURA_CONFIG")
    if not chosen:
        raise ConfigError(
            "no configuration: pass --config or set KURA_CONFIG",
            "設定ファイルがありません（--config または KURA_CONFIG）。",
        )
    p = Path(chosen)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{p} does not exist", f"{p} がありません。") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}", f"{p}: TOML の形式エラー: {exc}") from exc
    return parse(raw, p, dict(os.environ))

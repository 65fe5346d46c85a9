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
    [console]
    listen = "127.0.0.1"
    port = 8443
    cert = "/etc/kura/tls/cert.pem"
    key = "/etc/kura/tls/key.pem"
    webui = "/usr/share/kura/webui"   # optional: the console's templates and catalogs
    [ha]                       # optional: this appliance is one node of an HA pair
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kura.core.errors import KuraError


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
    """The appliance is one node of an HA pair (an ``[ha]`` section is
    there). The vault then calls its writable role "primary" rather than
    "single"; either way it follows its PostgreSQL's role by itself
    (kura.vault.roles). The pairing's own settings go here."""


@dataclass(frozen=True)
class Config:
    appliance: str
    database: DatabaseConfig
    vault: VaultConfig
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    path: Path | None = None
    ha: HaConfig | None = None  # None: a single appliance


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
            path=path,
            ha=HaConfig() if isinstance(raw.get("ha"), dict) else None,
        )
    except KeyError as exc:
        raise ConfigError(f"missing setting {exc}", f"設定 {exc} がありません。") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad setting: {exc}", f"設定の値が正しくありません: {exc}") from exc


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

"""kura-hasync's [ha] section: read from kura.toml and, for the monitor's
address and the node's name, from the keeper's own pg_autoctl.cfg; a wrong
value is a clear error in both languages, never a traceback."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kura.config import ConfigError, parse

BASE: dict[str, Any] = {
    "database": {"dsn": "host=/run/postgresql dbname=kura"},
    "vault": {"socket": "/run/kura/vault.sock", "keys_dir": "/var/lib/kura-keys"},
}
HA = {"node": "node_a", "monitor": "postgres://autoctl_node@witness/pg_auto_failover",
      "local_dsn": "host=/run/postgresql dbname=postgres", "vip": "192.0.2.10/24",
      "interface": "eth0"}


def with_ha(**ha: Any) -> dict[str, Any]:
    return {**BASE, "ha": ha}


def test_no_ha_section_is_a_single_appliance() -> None:
    assert parse(BASE).ha is None


def test_ha_section() -> None:
    ha = parse(with_ha(**HA), env={"RUNTIME_DIRECTORY": "/run/kura-hasync"}).ha
    assert ha is not None
    assert ha.vip == ipaddress.IPv4Interface("192.0.2.10/24")
    assert (ha.node, ha.formation, ha.fence_seconds, ha.poll_seconds) == (
        "node_a", "default", 3.0, 2.0)
    assert ha.status_file == Path("/run/kura-hasync/status.json")
    assert ha.control_socket == Path("/run/kura-hasync/control.sock")


def test_the_vault_finds_kura_hasyncs_files_from_its_own_unit() -> None:
    """The vault reads the same [ha] under its own RuntimeDirectory= (/run/kura):
    the status file and the control socket are still kura-hasync's."""
    ha = parse(with_ha(**HA), env={"RUNTIME_DIRECTORY": "/run/kura"}).ha
    assert ha is not None
    assert ha.status_file == Path("/run/kura-hasync/status.json")
    assert ha.control_socket == Path("/run/kura-hasync/control.sock")


def test_read_from_pg_autoctl_cfg(tmp_path: Path) -> None:
    cfg = tmp_path / "pg_autoctl.cfg"
    cfg.write_text("[pg_autoctl]\nrole = keeper\n"
                   "monitor = postgres://autoctl_node@witness:5432/pg_auto_failover?sslmode=require\n"
                   "formation = kura\ngroup = 0\nname = node_b\nhostname = 192.0.2.2\n"
                   "[postgresql]\npgdata = /var/lib/postgresql/kura\n")
    ha_keys = {k: v for k, v in HA.items() if k not in ("node", "monitor")}
    ha = parse(with_ha(**ha_keys, pg_autoctl_config=str(cfg))).ha
    assert ha is not None
    assert (ha.node, ha.formation) == ("node_b", "kura")
    assert ha.monitor.endswith("sslmode=require")


@pytest.mark.parametrize(("change", "english"), [
    ({"vip": "192.0.2.10"}, "IPv4 address with its prefix"),
    ({"vip": "2001:db8::10/64"}, "IPv4 address with its prefix"),
    ({"vip": "not-an-address/24"}, "[ha] vip"),
    ({"node": ""}, "needs node and monitor"),
    ({"fence_seconds": 0}, "must be positive"),
    ({"pg_autoctl_config": "/nonexistent/pg_autoctl.cfg"}, "cannot read"),
])
def test_bad_settings_are_clear(change: dict[str, Any], english: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_ha(**{**HA, **change}))
    assert english in caught.value.message_en
    assert caught.value.message_ja != caught.value.message_en


def test_missing_key_is_named() -> None:
    ha = {k: v for k, v in HA.items() if k != "interface"}
    with pytest.raises(ConfigError, match="interface"):
        parse(with_ha(**ha))


def test_daemon_without_ha_section_exits_with_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "kura.toml"
    conf.write_text('[database]\ndsn = "host=/nowhere"\n[vault]\nsocket = "/x"\nkeys_dir = "/y"\n')
    top = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-m", "kura.hasync.main", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PYTHONPATH": f"{top / 'daemons'}:{top}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "no [ha] section" in done.stderr
    assert "Traceback" not in done.stderr

"""Schema migrations and vault initialisation from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kura.devserver import LocalAppliance
from kura.vault import schema


def kura(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kura.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_migrate_is_idempotent_and_recorded(appliance: LocalAppliance) -> None:
    done = kura("db", "migrate", "--config", str(appliance.config_path))
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    rows = appliance.cluster.psql("kura_owner",
                                  "SELECT version, name, sha256 FROM schema_migrations")
    versions = [m.version for m in schema.available()]
    assert [int(line.split("|")[0]) for line in rows.split()] == versions
    assert all(len(line.split("|")[2]) == 64 for line in rows.split())


def test_a_changed_migration_is_refused(appliance: LocalAppliance) -> None:
    # Keep the real digest aside in a table, spoil it, then put it back.
    appliance.cluster.psql(
        "kura_owner",
        "CREATE TABLE spare AS SELECT sha256 FROM schema_migrations WHERE version = 1;"
        "UPDATE schema_migrations SET sha256 = repeat('0', 64) WHERE version = 1",
    )
    try:
        done = kura("db", "migrate", "--config", str(appliance.config_path))
        assert done.returncode == 1
        assert "changed after it was applied" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        appliance.cluster.psql(
            "kura_owner",
            "UPDATE schema_migrations SET sha256 = (SELECT sha256 FROM spare) WHERE version = 1;"
            "DROP TABLE spare",
        )
    assert kura("db", "migrate", "--config", str(appliance.config_path)).returncode == 0


def test_vault_init_makes_shares_once_and_never_replaces_a_seal() -> None:
    base = Path(tempfile.mkdtemp(prefix="kura-init-"))
    keys = base / "keys"
    config = base / "kura.toml"
    config.write_text(
        'appliance = "t"\n[database]\ndsn = "unused"\n'
        f'[vault]\nsocket = "{base}/vault.sock"\nkeys_dir = "{keys}"\n'
    )
    first = kura("vault", "init", "--config", str(config), "--seal", "shamir",
                 "--threshold", "2", "--shares", "3")
    assert first.returncode == 0, first.stderr
    shares = [line for line in first.stdout.splitlines() if line.startswith("share ")]
    assert len(shares) == 3
    assert len({s.split(": ", 1)[1] for s in shares}) == 3
    # No share and no key lands on disk: only the non-secret description.
    on_disk = b"".join(p.read_bytes() for p in keys.rglob("*") if p.is_file())
    for share in shares:
        assert share.split(": ", 1)[1].encode() not in on_disk
    assert sorted(p.name for p in keys.iterdir()) == ["seal.json"]
    assert (keys.stat().st_mode & 0o777) == 0o700

    again = kura("vault", "init", "--config", str(config), "--seal", "host")
    assert again.returncode == 1
    assert "refusing to replace" in again.stderr
    assert sorted(p.name for p in keys.iterdir()) == ["seal.json"]


def test_vault_refuses_to_start_without_a_config() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KURA_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "kura.vault.main"], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert done.returncode == 1
    assert "KURA_CONFIG" in done.stderr and "Traceback" not in done.stderr

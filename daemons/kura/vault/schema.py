"""Numbered schema migrations (migrations/NNN_name.sql), applied in order,
each in its own transaction, as the owner role. A migration already applied
is recorded with its SHA-256; a file changed after it was applied is refused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

from kura.core.errors import KuraError
from kura.core.purposes import CATALOGUE


class MigrationChanged(KuraError):
    """An applied migration's file no longer matches what was applied."""

    code = "migration_changed"
    status = 500
    ja = "適用済みのマイグレーションが変更されています。"
    en = "An applied migration file has changed."


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    folder = resources.files("kura.vault") / "migrations"
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            number, _, rest = item.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), item.read_text()))
    return sorted(found, key=lambda m: m.version)


def migrate(owner_dsn: str) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    applied_now: list[int] = []
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        # A standby of an HA pair takes no writes: its schema is the primary's,
        # replicated, and the primary's vault migrates it.
        recovering = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if recovering and recovering[0]:
            return applied_now
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("GRANT SELECT ON schema_migrations TO kura_vault")
        for m in available():
            with conn.transaction():
                # One migrator at a time, even if two daemons start together.
                conn.execute("SELECT pg_advisory_xact_lock(4711)")
                row = conn.execute(
                    "SELECT sha256 FROM schema_migrations WHERE version = %s", (m.version,)
                ).fetchone()
                if row:
                    if row[0] != m.digest:
                        raise MigrationChanged(
                            f"migration {m.version} ({m.name}) changed after it was applied",
                            f"マイグレーション {m.version}（{m.name}）が適用後に変更されています。",
                        )
                    continue
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.digest),
                )
                applied_now.append(m.version)
        with conn.transaction():
            for p in CATALOGUE:
                conn.execute(
                    "INSERT INTO purposes (code, ja, en) VALUES (%s, %s, %s)"
                    " ON CONFLICT (code) DO UPDATE SET ja = EXCLUDED.ja, en = EXCLUDED.en",
                    (p.code, p.ja, p.en),
                )
    return applied_now

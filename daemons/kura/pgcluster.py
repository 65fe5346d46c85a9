"""A private PostgreSQL cluster for development, tests and benchmarks.

Kura never uses the host's system cluster: ``create`` runs its own initdb in a
folder (scram-sha-256 everywhere, Unix socket only, no TCP), makes the two
roles the schema expects (``kura_owner`` owns the tables, ``kura_vault`` is
what the daemons use) and the ``kura`` database. The passwords are kept in
``secrets.json`` beside the cluster, readable by root only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from kura.core.errors import CommandFailed
from kura.proc import run

PG_USER = "postgres"  # initdb refuses root; Debian's postgresql package makes this user
ROLES = ("kura_owner", "kura_vault")  # owner of the tables; what the daemons log in as
REPLICATOR = "kura_replicator"  # a development replica's streaming role (replicate_from)

# Server settings every Kura cluster gets (this one and the appliance's):
# nothing about queries in the log, so no value of a statement reaches it.
QUIET_LOG_SETTINGS = (
    "log_statement = 'none'\n"
    "log_min_error_statement = 'panic'\n"
    "log_error_verbosity = 'terse'\n"
)

# Run in the kura database as a superuser: the daemons' role may use the
# schema, nobody else may, and only the owner role may create in it.
SCHEMA_PRIVILEGES_SQL = (
    "REVOKE ALL ON SCHEMA public FROM PUBLIC;"
    "GRANT USAGE ON SCHEMA public TO kura_vault;"
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
    "ALTER SCHEMA public OWNER TO kura_owner;"
)


def roles_and_database_sql(passwords: dict[str, str] | None = None) -> str:
    """SQL for psql, run as a superuser in the postgres database, that makes
    the two roles and the kura database, each only if it is missing. Without
    ``passwords`` the roles have none (the appliance uses peer authentication)."""
    parts = []
    for role in ROLES:
        password = f" PASSWORD '{passwords[role]}'" if passwords else ""
        parts.append(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} LOGIN{password}; END IF; END$$;\n"
        )
    # CREATE DATABASE cannot run inside DO: psql runs the generated statement.
    parts.append(
        "SELECT 'CREATE DATABASE kura OWNER kura_owner' "
        "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'kura')\\gexec\n"
    )
    return "".join(parts)


def bindir() -> Path:
    """The newest installed PostgreSQL server's bin folder."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return found[-1].parent


@dataclass(frozen=True)
class Cluster:
    """A cluster under ``base``: data in base/pg, sockets in base/run."""

    base: Path
    port: int = 5432

    @property
    def datadir(self) -> Path:
        return self.base / "pg"

    @property
    def socket_dir(self) -> Path:
        return self.base / "run"

    @property
    def logfile(self) -> Path:
        return self.base / "log" / "postgresql.log"

    @property
    def secrets_file(self) -> Path:
        return self.base / "secrets.json"

    def password(self, role: str) -> str:
        return str(json.loads(self.secrets_file.read_text())[role])

    def dsn(self, role: str = "kura_vault", dbname: str = "kura") -> str:
        return (
            f"host={self.socket_dir} port={self.port} dbname={dbname} "
            f"user={role} password={self.password(role)}"
        )

    @property
    def exists(self) -> bool:
        return (self.datadir / "PG_VERSION").exists() and self.secrets_file.exists()

    def create(self) -> None:
        """initdb, start, make the roles and the database. Idempotent: an existing
        cluster is left as it is."""
        if self.exists:
            return
        for sub in (self.base, self.socket_dir, self.logfile.parent):
            sub.mkdir(parents=True, exist_ok=True)
        # The postgres user must be able to reach its folders.
        os.chmod(self.base, 0o755)  # noqa: S103 (postgres must traverse it)
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        self.datadir.mkdir(mode=0o700)
        passwords = {r: secrets.token_urlsafe(24) for r in ("postgres", "kura_owner", "kura_vault")}
        pwfile = self.base / ".initdb-pw"
        pwfile.write_text(passwords["postgres"] + "\n")
        _chown_pg(self.datadir, self.socket_dir, self.logfile.parent, pwfile)
        try:
            run(
                [
                    bindir() / "initdb",
                    "-D",
                    self.datadir,
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--data-checksums",
                ],
                user=PG_USER,
            )
        finally:
            pwfile.unlink()
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# Kura: Unix socket only, no TCP; nothing about queries in the log\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "unix_socket_permissions = 0770\n"
                "password_encryption = 'scram-sha-256'\n"
                f"{QUIET_LOG_SETTINGS}"
                "shared_buffers = '256MB'\n"
                "max_connections = 100\n"
            )
        self.secrets_file.write_text(json.dumps(passwords))
        os.chmod(self.secrets_file, 0o600)
        self.start()
        self.psql("postgres", roles_and_database_sql(passwords), dbname="postgres")
        self.psql("postgres", SCHEMA_PRIVILEGES_SQL, dbname="kura")

    def replicate_from(self, primary: Cluster) -> None:
        """Make this cluster a streaming replica (hot standby) of ``primary``,
        on this machine: a replication role on the primary, a base backup
        over its Unix socket (``pg_basebackup -R``), this cluster's own socket
        folder, then start. What was here is replaced. For tests and the
        development pair only: the appliance's pair is pg_auto_failover's."""
        self.stop()
        passwords = json.loads(primary.secrets_file.read_text())
        if REPLICATOR not in passwords:
            passwords[REPLICATOR] = secrets.token_urlsafe(24)
            primary.psql(
                "postgres",
                f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATOR}')"
                f" THEN CREATE ROLE {REPLICATOR} REPLICATION LOGIN; END IF; END$$;\n"
                f"ALTER ROLE {REPLICATOR} PASSWORD '{passwords[REPLICATOR]}';\n",
                dbname="postgres",
            )
            primary.secrets_file.write_text(json.dumps(passwords))
        for sub in (self.base, self.socket_dir, self.logfile.parent):
            sub.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)  # noqa: S103 (postgres must traverse it)
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        self.datadir.mkdir(mode=0o700)
        _chown_pg(self.datadir, self.socket_dir, self.logfile.parent)
        run(
            [
                bindir() / "pg_basebackup",
                "-D",
                self.datadir,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                primary.socket_dir,
                "-p",
                str(primary.port),
                "-U",
                REPLICATOR,
            ],
            user=PG_USER,
            env=dict(os.environ, PGPASSWORD=passwords[REPLICATOR]),
        )
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\n# Kura: this replica's own socket\nunix_socket_directories = "
                       f"'{self.socket_dir}'\n")
        # The same roles, the same passwords: the data are the primary's.
        self.secrets_file.write_text(json.dumps(passwords))
        os.chmod(self.secrets_file, 0o600)
        self.start()

    def promote(self) -> None:
        """End recovery: this replica becomes a primary (``pg_ctl promote``)."""
        run([bindir() / "pg_ctl", "-D", self.datadir, "-w", "promote"], user=PG_USER)

    def in_recovery(self) -> bool:
        return self.psql("postgres", "SELECT pg_is_in_recovery()", dbname="postgres").strip() == "t"

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists() and _pg_ctl_status(self)

    def start(self) -> None:
        if self.running():
            return
        run(
            [
                bindir() / "pg_ctl",
                "-D",
                self.datadir,
                "-l",
                self.logfile,
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port}",
                "start",
            ],
            user=PG_USER,
        )

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            run([bindir() / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop"], user=PG_USER)

    def postmaster_pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def psql(self, role: str, sql: str, dbname: str = "kura") -> str:
        """Run SQL as ``role``. The SQL goes through standard input and the password
        through the environment, so neither shows in ``ps``."""
        env = dict(os.environ, PGPASSWORD=self.password(role))
        out = run(
            [
                bindir() / "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.socket_dir,
                "-p",
                str(self.port),
                "-U",
                role,
                "-d",
                dbname,
                "-f",
                "-",
            ],
            input=sql.encode(),
            env=env,
        )
        return out.decode()


def _pg_ctl_status(cluster: Cluster) -> bool:
    try:
        run([bindir() / "pg_ctl", "-D", cluster.datadir, "status"], user=PG_USER)
    except CommandFailed:
        return False
    return True


def _chown_pg(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam(PG_USER)
    for p in paths:
        os.chown(p, entry.pw_uid, entry.pw_gid)

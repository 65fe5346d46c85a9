"""The appliance's PostgreSQL: Debian's cluster ``<version>/main`` on the
kura-data partition, Unix socket only (role single), peer authentication
through the ident map ``kura`` (kura-vault → kura_vault, root → kura_owner),
so no database password exists anywhere. The roles, the database and the
schema privileges are those of :mod:`kura.pgcluster`; the schema comes from
:mod:`kura.vault.schema`, applied as kura_owner.

Each function is safe to run again: files are written only if they differ,
the cluster is created only if missing, the SQL creates only what is missing,
and PostgreSQL is restarted only if its configuration changed.
"""

from __future__ import annotations

from kura.pgcluster import QUIET_LOG_SETTINGS, SCHEMA_PRIVILEGES_SQL, roles_and_database_sql
from kura_firstboot import certificate
from kura_firstboot.errors import StepFailed
from kura_firstboot.system import System

VAULT_DSN = "host=/run/postgresql dbname=kura user=kura_vault"
OWNER_DSN = "host=/run/postgresql dbname=kura user=kura_owner"
IDENT_MAP = "kura"
HBA_BEGIN = "# kura-firstboot: begin"
HBA_END = "# kura-firstboot: end"


def version(system: System) -> str:
    """The newest installed server (/usr/lib/postgresql/*/bin/initdb)."""
    found = sorted(
        (p.parent.parent.name for p in system.path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda v: int(v) if v.isdigit() else 0,
    )
    if not found:
        raise StepFailed("PostgreSQL is not installed on this image",
                         "このイメージには PostgreSQL がインストールされていません")
    return found[-1]


def conf_dir(ver: str) -> str:
    return f"/etc/postgresql/{ver}/main"


def unit(ver: str) -> str:
    return f"postgresql@{ver}-main.service"


def render_settings(ver: str) -> str:
    """Unix socket only: a single appliance has no database client on the
    network (the pair, later, will open it to its peer only)."""
    tls = f"{conf_dir(ver)}/tls"
    return (
        "# Written by kura-firstboot.\n"
        "listen_addresses = ''\n"
        "password_encryption = scram-sha-256\n"
        "ssl = on\n"
        f"ssl_cert_file = '{tls}/server.crt'\n"
        f"ssl_key_file = '{tls}/server.key'\n"
        f"{QUIET_LOG_SETTINGS}"
    )


HBA_LINES = (
    f"local   kura   kura_vault   peer map={IDENT_MAP}",
    f"local   kura   kura_owner   peer map={IDENT_MAP}",
)
IDENT_LINES = (
    f"{IDENT_MAP}   kura-vault   kura_vault",
    f"{IDENT_MAP}   root         kura_owner",
)


def render_hba(current: str) -> str:
    """pg_hba.conf with Kura's lines before Debian's defaults (first match wins)."""
    if HBA_BEGIN in current:
        start = current.index(HBA_BEGIN)
        end = current.index(HBA_END, start) + len(HBA_END) + 1
        current = current[:start] + current[end:]
    block = "\n".join((HBA_BEGIN, *HBA_LINES, HBA_END)) + "\n"
    lines = current.splitlines(keepends=True)
    # After the leading comment block, before the first rule.
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")),
              len(lines))
    return "".join(lines[:at]) + block + "".join(lines[at:])


def render_ident(current: str) -> str:
    lines = current.splitlines()
    have = {" ".join(line.split()) for line in lines}
    lines += [line for line in IDENT_LINES if " ".join(line.split()) not in have]
    return "\n".join(lines) + "\n"


def create_cluster(system: System, ver: str) -> None:
    if system.exists(f"{conf_dir(ver)}/postgresql.conf"):
        return
    system.run(
        "pg_createcluster", ver, "main", "--",
        "--auth-local=peer", "--auth-host=scram-sha-256", "--data-checksums",
    )


def configure(system: System, ver: str) -> bool:
    """Kura's settings, TLS copies, pg_hba and pg_ident; True if any changed."""
    uid, gid = system.user("postgres")
    base = conf_dir(ver)
    system.make_dir(f"{base}/tls", 0o750, (uid, gid))
    changed = False
    cert = system.path(certificate.CERT).read_bytes()
    key = system.path(certificate.KEY).read_bytes()
    changed |= system.write_file(f"{base}/tls/server.crt", cert, 0o644, (uid, gid))
    changed |= system.write_file(f"{base}/tls/server.key", key, 0o600, (uid, gid))
    system.make_dir(f"{base}/conf.d", 0o755, (uid, gid))
    changed |= system.write_file(f"{base}/conf.d/kura.conf", render_settings(ver), 0o644,
                                 (uid, gid))
    for name, render in (("pg_hba.conf", render_hba), ("pg_ident.conf", render_ident)):
        path = f"{base}/{name}"
        changed |= system.write_file(path, render(system.read_text(path) or ""), 0o640, (uid, gid))
    return changed


def start(system: System, ver: str, restart: bool) -> None:
    system.systemctl("restart" if restart else "start", unit(ver))


def psql(system: System, sql: str, dbname: str) -> None:
    """SQL as the postgres superuser (peer), on standard input."""
    system.run(
        "runuser", "-u", "postgres", "--",
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "-",
        input=sql.encode(),
    )


def create_roles(system: System) -> None:
    psql(system, roles_and_database_sql(), "postgres")
    psql(system, SCHEMA_PRIVILEGES_SQL, "kura")


def drop_database(system: System) -> None:
    """Before the stamp only: a remade seal needs an empty keyring."""
    psql(system, "DROP DATABASE IF EXISTS kura WITH (FORCE);", "postgres")


def setup(system: System) -> list[int]:
    """The whole step; returns the schema versions applied now."""
    ver = version(system)
    create_cluster(system, ver)
    changed = configure(system, ver)
    start(system, ver, restart=changed)
    create_roles(system)
    return system.migrate(OWNER_DSN)


def remove_cluster(system: System) -> None:
    """Factory reset: stop and delete the cluster (data and configuration)."""
    for conf in system.path("/etc/postgresql").glob("*/main/postgresql.conf"):
        ver = conf.parent.parent.name
        system.run("pg_dropcluster", "--stop", ver, "main")


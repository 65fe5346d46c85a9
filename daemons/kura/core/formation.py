"""The pair's pg_auto_failover formation: what the witness and the two data nodes
are made with, and every timer Kura changes from pg_auto_failover's defaults.

Pure: it builds command lines and SQL; the first-boot wizard, ``kura witness`` and
the test lab (tests/ha/lab.py) run them. docs/ha.md ("pg_auto_failover's timers")
shows the same table; tests/test_docs.py keeps them in step.

Target: a dead or cut-off primary replaced in at most 15 s at p99, never two
writable primaries, no acknowledged write lost.
"""

from __future__ import annotations

from dataclasses import dataclass

PG_VERSION = "17"  # trixie's PostgreSQL, and postgresql-17-auto-failover
PG_BIN = f"/usr/lib/postgresql/{PG_VERSION}/bin"
PORT = 5432
MONITOR_DB = "pg_auto_failover"
MONITOR_USER = "autoctl_node"  # the keepers' account on the monitor
REPLICATION_USER = "pgautofailover_replicator"  # pg_auto_failover's own replication account
HEALTH_USER = "pgautofailover_monitor"  # the monitor's health checks on the data nodes
FORMATION = "default"


@dataclass(frozen=True)
class Timer:
    value: str
    default: str
    why: str


# Every timer changed from pg_auto_failover's default, with the default and the reason.
TIMERS: dict[str, dict[str, Timer]] = {
    # monitor GUCs (ALTER SYSTEM in the witness's monitor database, then reload)
    "monitor": {
        "pgautofailover.health_check_period": Timer(
            "1000", "5000", "probe each node every second: detection starts within 1 s"),
        "pgautofailover.health_check_timeout": Timer(
            "1000", "5000", "a LAN connect takes milliseconds; 1 s without an answer is a "
            "dead node"),
        "pgautofailover.health_check_max_retries": Timer(
            "1", "2", "one retry still rides out a lost packet"),
        "pgautofailover.health_check_retry_delay": Timer(
            "500", "2000", "the retry comes half a second later"),
        "pgautofailover.node_considered_unhealthy_timeout": Timer(
            "3000", "20000", "keepers report every second: 3 missed reports plus a failed "
            "health check mean the node is gone"),
        "pgautofailover.primary_demote_timeout": Timer(
            "6000", "30000", "how long the monitor waits for an old primary it cannot reach "
            "to have stopped itself: more than the keeper's network_partition_timeout (3 s) "
            "plus its 1 s loop, its 2 s connect timeout to the monitor and a fast shutdown"),
    },
    # keeper settings (pg_autoctl config set, on both data nodes)
    "keeper": {
        "timeout.network_partition_timeout": Timer(
            "3", "20", "a primary that reaches neither the monitor nor a standby for 3 s "
            "stops PostgreSQL (it acknowledges nothing meanwhile: synchronous commit waits "
            "for the standby)"),
        "timeout.postgresql_restart_failure_timeout": Timer(
            "5", "20", "a PostgreSQL that cannot be restarted within 5 s is reported down "
            "so the monitor fails over"),
    },
    # PostgreSQL settings on the data nodes (ALTER SYSTEM on the first primary; base
    # backups carry them to the standby)
    "postgresql": {
        "wal_sender_timeout": Timer(
            "3s", "60s", "the keeper takes any pg_stat_replication row as 'standby "
            "reachable': a walsender to a vanished standby must go within 3 s, or a cut-off "
            "primary would not see its partition for a minute"),
        "wal_receiver_timeout": Timer(
            "3s", "60s", "the standby notices a vanished primary as fast"),
    },
}


@dataclass(frozen=True)
class TlsFiles:
    """Paths, on the node, of the formation's CA and the node's own certificate."""

    ca: str
    cert: str
    key: str

    def options(self) -> list[str]:
        return ["--ssl-ca-file", self.ca, "--server-cert", self.cert, "--server-key", self.key,
                "--ssl-mode", "verify-full"]


def monitor_uri(witness: str, ca_file: str) -> str:
    """How the keepers (and kura-hasync) reach the monitor: TLS, the CA checked and the
    witness's address in its certificate. The password comes from the node's .pgpass."""
    return (f"postgres://{MONITOR_USER}@{witness}:{PORT}/{MONITOR_DB}"
            f"?sslmode=verify-full&sslrootcert={ca_file}")


def create_monitor(pgdata: str, address: str, tls: TlsFiles) -> list[str]:
    """``pg_autoctl create monitor`` for the witness."""
    return ["pg_autoctl", "create", "monitor", "--pgdata", pgdata, "--pgport", str(PORT),
            "--pgctl", f"{PG_BIN}/pg_ctl", "--hostname", address,
            "--auth", "scram-sha-256", *tls.options()]


def create_node(pgdata: str, address: str, name: str, monitor: str, tls: TlsFiles) -> list[str]:
    """``pg_autoctl create postgres`` for a data node. The first one made becomes the
    primary; the second makes itself a standby by a base backup of the first.
    ``--replication-quorum true`` makes the standby synchronous: the primary
    acknowledges a commit only once the standby has it."""
    return ["pg_autoctl", "create", "postgres", "--pgdata", pgdata, "--pgport", str(PORT),
            "--pgctl", f"{PG_BIN}/pg_ctl", "--hostname", address, "--name", name,
            "--monitor", monitor, "--auth", "scram-sha-256", "--replication-quorum", "true",
            *tls.options()]


def secure_hba(text: str) -> str:
    """pg_hba.conf without initdb's ``trust`` lines, which pg_autoctl leaves in place:
    with them any local user of the host could connect as any role (the superuser
    too) over the Unix socket or 127.0.0.1. Local lines become ``peer`` (pg_autoctl
    itself connects as the postgres user, which peer lets in); host lines with
    ``trust`` are dropped. Every other line, pg_autoctl's own included, is kept."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[-1] == "trust":
            if fields[0] != "local":
                continue
            line = line.rstrip()
            line = line[: line.rindex("trust")] + "peer"
        out.append(line)
    return "\n".join(out) + "\n"


def run_node(pgdata: str) -> list[str]:
    return ["pg_autoctl", "run", "--pgdata", pgdata]


def keeper_settings(pgdata: str) -> list[list[str]]:
    """``pg_autoctl config set`` commands for a data node's keeper."""
    return [["pg_autoctl", "config", "set", "--pgdata", pgdata, key, timer.value]
            for key, timer in TIMERS["keeper"].items()]


def monitor_settings_sql() -> str:
    """Run in the monitor's database as its superuser."""
    return "".join(f"ALTER SYSTEM SET {guc} = '{timer.value}';"
                   for guc, timer in TIMERS["monitor"].items()) + "SELECT pg_reload_conf();"


def primary_settings_sql() -> str:
    """Run on the first primary as a superuser, before the standby is made."""
    return "".join(f"ALTER SYSTEM SET {guc} = '{timer.value}';"
                   for guc, timer in TIMERS["postgresql"].items()) + "SELECT pg_reload_conf();"


# kura-hasync drops the floating address after this long without the monitor and
# without a streaming standby: no later than the keeper stops PostgreSQL.
FENCE_SECONDS = float(TIMERS["keeper"]["timeout.network_partition_timeout"].value)

#!/bin/sh
# Run inside `unshare -m -n --propagation private`: the image's root tree (read-only,
# an overlay on top) with this checkout's daemons/, a loopback-only network, and in
# it `kura witness init` and the monitor it made; then connections over TLS.
# Arguments: IMAGE OFFSET SIZE WORKDIR DAEMONS. Prints "check NAME VALUE" lines.
set -eu
image=$1 offset=$2 size=$3 work=$4 daemons=$5
mkdir -p "$work/lower" "$work/upper" "$work/work" "$work/root"
mount -o "ro,loop,offset=$offset,sizelimit=$size" "$image" "$work/lower"
mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/work" "$work/root"
root=$work/root
mount --bind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
mount -t tmpfs -o mode=755 run "$root/run"
mkdir -p "$root/opt/kura/daemons"
mount --bind "$daemons" "$root/opt/kura/daemons"
mount -o remount,bind,ro "$root/opt/kura/daemons"
ip link set lo up
in_root() { chroot "$root" env -i PATH=/usr/lib/postgresql/17/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME=/root LANG=C.UTF-8 PYTHONPATH=/opt/kura/daemons "$@"; }
in_root install -d -o postgres -g postgres -m 2775 /run/postgresql
in_root python3 -m kura.cli witness init --address 127.0.0.1 >"$work/init.out" 2>&1 || {
    cat "$work/init.out"; exit 1; }
cat "$work/init.out"
W=/var/lib/kura-witness
echo "check ca_key_mode $(in_root stat -c '%a:%U' $W/tls/ca.key)"
echo "check trust_lines $(grep -c 'trust *$' "$root$W/pgdata/pg_hba.conf" || true)"
# the unit's command line, supervised by this script instead of systemd
in_root runuser -u postgres -- env PGDATA=$W/pgdata PGPASSFILE=$W/pgpass HOME=/var/lib/postgresql \
    pg_autoctl run >"$work/run.log" 2>&1 &
ok=
for _ in $(seq 1 100); do
    if in_root runuser -u postgres -- psql -X -At -d pg_auto_failover -c 'select 1' >/dev/null 2>&1
    then ok=1; break; fi
    sleep 0.2
done
[ -n "$ok" ] || { echo "monitor did not start"; cat "$work/run.log"; exit 1; }
# A keeper's connection: the enrol code's URI, the CA from witness init, the password
# from the formation's password file (as a node's .pgpass holds it).
uri="postgres://autoctl_node@127.0.0.1:5432/pg_auto_failover?sslmode=verify-full&sslrootcert=$W/tls/ca.crt"
echo "check verified $(in_root runuser -u postgres -- env PGPASSFILE=$W/pgpass psql -X -At "$uri" \
    -c "select ssl from pg_stat_ssl where pid = pg_backend_pid()")"
echo "check health_check_period $(in_root runuser -u postgres -- env PGPASSFILE=$W/pgpass \
    psql -X -At "$uri" -c 'show pgautofailover.health_check_period')"
echo "check jit $(in_root runuser -u postgres -- env PGPASSFILE=$W/pgpass psql -X -At "$uri" -c 'show jit')"
# Another CA: the same monitor must be refused (what a node with the wrong pin meets).
in_root python3 -c "
import datetime, sys
sys.path.insert(0, '/opt/kura/daemons')
from kura.core import witness
open('/tmp/other-ca.crt', 'wb').write(witness.make_ca('other', datetime.datetime.now(datetime.UTC)).cert_pem)"
other="postgres://autoctl_node@127.0.0.1:5432/pg_auto_failover?sslmode=verify-full&sslrootcert=/tmp/other-ca.crt"
if in_root runuser -u postgres -- env PGPASSFILE=$W/pgpass psql -X -At "$other" -c 'select 1' \
    >"$work/other.out" 2>&1; then echo "check other_ca accepted"
else echo "check other_ca refused: $(tr '\n' ' ' <"$work/other.out")"; fi
# Without the password: refused (scram-sha-256 over TLS, no trust).
if in_root runuser -u postgres -- env PGPASSFILE=/dev/null psql -X -At -w "$uri" -c 'select 1' \
    >"$work/nopw.out" 2>&1; then echo "check no_password accepted"
else echo "check no_password refused"; fi
# Another local user of the host, as the superuser, over 127.0.0.1 and the socket:
# initdb's trust lines are gone (kura.core.formation.secure_hba).
if in_root runuser -u nobody -- psql -X -At -w -h 127.0.0.1 -U postgres -d postgres \
    -c 'select 1' >/dev/null 2>&1; then echo "check local_superuser accepted"
elif in_root runuser -u nobody -- psql -X -At -w -U postgres -d postgres -c 'select 1' \
    >/dev/null 2>&1; then echo "check local_superuser accepted"
else echo "check local_superuser refused"; fi
# pg_autoctl's own monitor listener connects over the socket as autoctl_node (peer, mapped)
sleep 1
echo "check listener_errors $(grep -c 'authentication failed' "$work/run.log" || true)"
in_root runuser -u postgres -- env PGDATA=$W/pgdata pg_autoctl stop >/dev/null 2>&1 || true
wait || true

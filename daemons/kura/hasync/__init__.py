"""kura-hasync: follows pg_auto_failover's decisions on one data node of an HA
pair and owns the floating address (VIP). The decisions themselves are in
kura.core.ha; this package is the shell: the monitor's notifications
(monitor.py), the local PostgreSQL (local.py), netlink and ARP (vip.py), and
the daemon that ties them together (main.py)."""

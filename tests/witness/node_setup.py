"""Run inside a data node's root (the image's python3): first boot's role and database
steps for a primary or a standby, from the enrol code and the enrolment file, with the keeper's unit
stood in for by a background ``pg_autoctl run`` (no systemd here).

Arguments: ENROL_CODE ENROLMENT_FILE VIP ROLE"""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Sequence

sys.path[:0] = ["/opt/kura/daemons", "/opt/kura/firstboot"]

from kura_firstboot import ha  # noqa: E402
from kura_firstboot.system import System, real_runner  # noqa: E402


def runner(argv: Sequence[str], data: bytes | None) -> bytes:
    if list(argv[:3]) == ["systemctl", "enable", "--now"]:
        if argv[3] == ha.KEEPER_UNIT:
            log = open("/var/log/keeper.log", "ab")  # noqa: SIM115 (the child keeps it)
            subprocess.Popen(
                ["runuser", "-u", "postgres", "--", "env", f"PGDATA={ha.PGDATA}",
                 f"PGPASSFILE={ha.PGPASS}", "HOME=/var/lib/postgresql", "pg_autoctl", "run"],
                stdout=log, stderr=log, start_new_session=True)
        return b""
    return real_runner(argv, data)


def main() -> None:
    code, path, vip, role = sys.argv[1:5]
    with open(path, encoding="utf-8") as source:
        enrolment = source.read()
    pair = ha.parse_pair({"enrol_code": code, "enrolment": enrolment, "vip": vip},
                         datetime.datetime.now(datetime.UTC))
    system = System(runner=runner)
    ha.install_files(system, pair)
    applied = ha.setup_node(system, role, pair.to_json())
    print("applied", " ".join(map(str, applied)), flush=True)


if __name__ == "__main__":
    main()

"""A clerk's client of the HA pair, run inside the lab's client namespace: it reaches
the pair only through the floating address, over the console's JSON API.

    setup   activate the first DA (its one-time password from a file) and provision an
            MU through the two-person rules; write the MU's credentials to a 0600 file
    writer  register one payee after another as that MU; one line per attempt:
            "ack ID START END NODE SECONDS" for a 201 (NODE: the appliance that answered
            /status right before, as the clerk's screen would show it; SECONDS: the POST
            alone, the write's latency), "fail ID START END WHY" otherwise. Only an "ack"
            counts as acknowledged.

The numbers are generated (valid check digits), never real ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from tests.support import Api, activate, my_number, provision

HTTP_TIMEOUT = 3.0


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def code(write_id: int) -> str:
    return f"W-{write_id:07d}"


def setup(url: str, ca: Path, da_password_file: Path, out: Path) -> None:
    password = da_password_file.read_text().strip()
    da = activate(Api(url, ca).sign_in("admin", password), password)
    mu = provision(da, "writer", "MU")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"username": mu.username, "password": mu.password,
                   "totp_secret": mu.totp_secret}, f)


class Clerk:
    def __init__(self, url: str, ca: Path, creds: dict[str, str]) -> None:
        self.anon = Api(url, ca)
        self.creds = creds
        self.api: Api | None = None

    def signed_in(self) -> Api:
        if self.api is None:
            self.api = self.anon.sign_in(self.creds["username"], self.creds["password"],
                                         self.creds["totp_secret"])
        return self.api

    def node(self) -> str:
        r = self.anon.get("/status")
        return str(r.json.get("appliance", "?")) if r.status == 200 else "?"


def writer(url: str, ca: Path, creds_file: Path, start_id: int, pause: float) -> None:
    clerk = Clerk(url, ca, json.loads(creds_file.read_text()))
    write_id = start_id
    while True:
        began = time.time()
        why = ""
        node = "?"
        try:
            api = clerk.signed_in()
            node = clerk.node()
            posted = time.time()
            r = api.post("/payees", {"code": code(write_id), "name": f"書込 {write_id}",
                                     "number": my_number(random.Random(write_id))})
            if r.status == 201:
                done = time.time()
                emit(f"ack {write_id} {began:.3f} {done:.3f} {node} {done - posted:.4f}")
                write_id += 1
                time.sleep(pause)
                continue
            why = f"{r.status}:{r.error_code}"
            if r.status == 401:
                clerk.api = None
        except (OSError, AssertionError, ValueError) as exc:
            why = type(exc).__name__
            clerk.api = None if isinstance(exc, AssertionError) else clerk.api
        emit(f"fail {write_id} {began:.3f} {time.time():.3f} {why}")
        write_id += 1
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["setup", "writer"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True, type=Path)
    parser.add_argument("--creds", required=True, type=Path)
    parser.add_argument("--da-password-file", type=Path)
    parser.add_argument("--start-id", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.05)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Api.timeout = HTTP_TIMEOUT
    if args.mode == "setup":
        assert args.da_password_file
        setup(args.url, args.ca, args.da_password_file, args.creds)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            writer(args.url, args.ca, args.creds, args.start_id, args.pause)


if __name__ == "__main__":
    main()

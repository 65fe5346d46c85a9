"""``kura-agent``: the command line (enroll, run, restore, status, apply).

Exit codes: 0 done; 1 an error (one line on stderr); 2 bad usage; 3 the
bundle given to ``apply`` was refused (nothing changed).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path

from kura.agent import nft, usb
from kura.agent.enforce import Enforcer
from kura.agent.errors import AgentError
from kura.agent.state import DEFAULT_DIR, State
from kura.core import bundle

EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3
TOKEN_VARIABLE = "KURA_AGENT_TOKEN"  # noqa: S105 - the name of a variable, not a token


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help=f"the agent's state directory (default {DEFAULT_DIR})")
    common.add_argument("--usbguard-rules", type=Path, default=usb.RULE_FILE, metavar="FILE",
                        help=f"the usbguard rule file the agent owns (default {usb.RULE_FILE})")
    parser = argparse.ArgumentParser(
        prog="kura-agent",
        description="Kura's endpoint agent: enrols with the appliance, enforces its signed "
                    "policy bundles with nftables and usbguard, and reports posture.",
        epilog="exit codes: 0 done, 1 error, 2 bad usage, 3 bundle refused")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    enroll = commands.add_parser(
        "enroll", parents=[common], help="enrol with the appliance using a one-time token",
        description="Fetch the appliance's agent CA, check it against --fingerprint, make a "
                    "key and have the appliance certify it with the one-time token.")
    enroll.add_argument("--server", required=True, help="e.g. https://kura.example:8445")
    enroll.add_argument(
        "--token", metavar="T",
        help=f"the one-time token from the console. Leave it out (or give -) to be asked for "
             f"it, or read from stdin when that is not a terminal, or set ${TOKEN_VARIABLE}: "
             f"a token given here is visible to every local user in the process list "
             f"until enrolment ends")
    enroll.add_argument("--fingerprint", required=True,
                        help="SHA-256 of the CA certificate (hex, colons and case ignored)")
    enroll.add_argument("--hostname", help="the name to enrol under (default: this host's)")
    commands.add_parser(
        "run", parents=[common], help="stay connected: take bundles, send heartbeats",
        description="Connect to the appliance over mTLS, enforce every new bundle, send a "
                    "heartbeat with the posture report, pull when the stream is down.")
    commands.add_parser(
        "restore", parents=[common], help="enforce the stored bundle again (at boot)",
        description="Verify the stored last good bundle again and apply it; run at boot "
                    "before the network comes up.")
    commands.add_parser("status", parents=[common], help="show enrolment and what is enforced")
    apply = commands.add_parser(
        "apply", parents=[common], help="enforce a bundle from a file (e.g. a USB stick)",
        description="Offer a signed envelope from FILE; it is taken only by the same rules "
                    "as one from the appliance (signature, profile, appliance, serial).")
    apply.add_argument("file", type=Path, metavar="FILE")
    return parser


def _status(state: State) -> None:
    identity = state.identity()
    print(f"enrolled as {identity.agent_id} (profile {identity.profile}) with {identity.server}")
    current = Enforcer(state).current()
    if current is None:
        print("enforced bundle: none yet")
    else:
        print(f"enforced bundle: serial {current.serial} (policy version "
              f"{current.body.get('policy_version')}, issued {current.body.get('issued')})")
    try:
        table = nft.table()
    except nft.FirewallError as exc:
        print(f"nftables: {exc}")
    else:
        if table is None:
            print("nftables: table inet kura_agent is NOT loaded (run: kura-agent restore)")
        else:
            dropped = sum(nft.drops().values())
            print(f"nftables: table inet kura_agent loaded, {dropped} packets dropped")
    print(f"last contact: {state.contact() or 'never'}")


def _apply(state: State, enforcer: Enforcer, file: Path) -> int:
    try:
        envelope = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise AgentError(f"{file} is not a bundle file: {exc}") from exc
    try:
        verdict = enforcer.offer(envelope)
    except bundle.Refused as exc:
        print(f"kura-agent: bundle refused: {exc.reason}; nothing changed", file=sys.stderr)
        return EXIT_REFUSED
    current = enforcer.current()
    serial = current.serial if current else "?"
    print(f"bundle {serial} enforced" if verdict == bundle.ACCEPT
          else f"bundle {serial} already enforced")
    return 0


def _token(given: str | None) -> str:
    """The one-time token, by preference from where other local users cannot
    read it: ``$KURA_AGENT_TOKEN`` (only root and the user can read a
    process's environment) or stdin (asked for without echo on a terminal).
    ``--token T`` still works but puts T in every user's process list, where
    another local user could race to use it first."""
    if given is not None and given != "-":
        return given
    token = os.environ.get(TOKEN_VARIABLE, "") if given is None else ""
    if not token:
        token = (getpass.getpass("one-time token: ") if sys.stdin.isatty()
                 else sys.stdin.readline())
    token = token.strip()
    if not token:
        raise AgentError(f"no token: give it on stdin, in ${TOKEN_VARIABLE} or with --token")
    return token


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The run loop logs its steps (to the journal); one-shot commands print
    # their own one line and log only what went wrong.
    logging.basicConfig(level=logging.INFO if args.command == "run" else logging.ERROR,
                        format="%(levelname)s %(message)s")
    state = State(args.state)
    enforcer = Enforcer(state, args.usbguard_rules)
    try:
        if args.command == "enroll":
            from kura.agent import enrol  # only enroll needs it
            identity = enrol.enroll(state, args.server, _token(args.token),
                                    args.fingerprint, args.hostname)
            print(f"enrolled as {identity.agent_id} (profile {identity.profile}); "
                  "start it with: systemctl enable --now kura-agent")
        elif args.command == "run":
            from kura.agent import client  # aiohttp only for the run loop
            return client.main(state, enforcer)
        elif args.command == "restore":
            restored = enforcer.restore()
            print(f"bundle {restored.serial} enforced again (usbguard: {enforcer.usbguard})")
        elif args.command == "status":
            _status(state)
        elif args.command == "apply":
            return _apply(state, enforcer, args.file)
    except AgentError as exc:
        print(f"kura-agent: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

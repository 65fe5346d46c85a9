"""``kura``: the administrator's command line.

kura check-number [--corporate]     numbers from standard input, one per line
kura db migrate                     apply schema migrations
kura vault init --seal MODE         make the root key and seal it
kura ha offer --address ADDR        on a new standby: a pairing offer and its code
kura ha accept ENVELOPE             on that standby: take the root key from the primary
kura ha offer --address ADDR --serve   ... or wait for the primary's console to deliver it
kura ha unpair --yes                on a paired standby: forget the key, to pair again
kura audit export -o FILE           download a verifiable audit bundle
kura audit verify FILE [--after OLD]  check a bundle offline, on any machine
kura dev                            a local appliance (what ./build.sh dev runs)
kura boot-report                    one status line for the console (appliance)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from kura.core import numbers
from kura.core.errors import KuraError


def cmd_check_number(args: argparse.Namespace) -> int:
    """Numbers come from standard input only: argv shows in ps and shell history."""
    problem_of = numbers.corporate_number_problem if args.corporate else numbers.my_number_problem
    all_ok, seen = True, 0
    for lineno, line in enumerate(sys.stdin, 1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        seen += 1
        problem = problem_of(text)
        if problem is None:
            print(f"{lineno}: OK")
        else:
            all_ok = False
            reason = problem.en if args.english else f"{problem.ja} ({problem.en})"
            print(f"{lineno}: NG {problem.code}: {reason}")
    if seen == 0:
        print("no numbers on standard input (one per line)", file=sys.stderr)
        return 2
    return 0 if all_ok else 1


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from kura import config
    from kura.vault import schema

    cfg = config.load(args.config)
    if not cfg.database.owner_dsn:
        print("kura db migrate: [database] owner_dsn is not set", file=sys.stderr)
        return 1
    applied = schema.migrate(cfg.database.owner_dsn)
    print(f"applied: {', '.join(map(str, applied))}" if applied else "schema is up to date")
    return 0


def cmd_vault_init(args: argparse.Namespace) -> int:
    from kura import config
    from kura.core.keys import new_root_key
    from kura.vault import sealing

    cfg = config.load(args.config)
    keys_dir = cfg.vault.keys_dir
    if sealing.read_seal(keys_dir) is not None:
        print(
            f"kura vault init: {keys_dir} is already sealed; refusing to replace the root key",
            file=sys.stderr,
        )
        return 1
    root = new_root_key()
    shares: list[str] = []
    if args.seal == "shamir":
        shares = sealing.init_shamir(keys_dir, root, args.threshold, args.shares)
    elif args.seal == "creds":
        recovery = (args.threshold, args.shares) if args.recovery else None
        shares = sealing.init_creds(keys_dir, root, with_key=args.with_key, recovery=recovery)
    else:
        sealing.init_host(keys_dir, root)
    print(f"sealed with {args.seal} in {keys_dir}")
    for i, share in enumerate(shares, 1):
        print(f"share {i}/{len(shares)}: {share}")
    if shares:
        print(
            f"any {args.threshold} of these {len(shares)} shares unseal the vault; "
            "they are shown only now"
        )
    return 0


def cmd_ha_offer(args: argparse.Namespace) -> int:
    """The standby's first half: the offer the primary fetches, and the code
    the DA reads here and types on the primary (see kura.core.pairing)."""
    import json
    from datetime import UTC, datetime

    from kura import config
    from kura.core import pairing as core_pairing
    from kura.vault import pairing, sealing

    cfg = config.load(args.config)
    keys_dir = cfg.vault.keys_dir
    if sealing.read_seal(keys_dir) is not None:
        print(f"kura ha offer: {keys_dir} is already sealed: this appliance has its root key",
              file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    pending = None if args.new else pairing.pending_offer(keys_dir, now)
    if pending is None:
        pending = core_pairing.make_offer(args.name or cfg.appliance, args.address, now)
        pairing.save_offer(keys_dir, pending)
    offer = json.dumps(pending.offer.to_json(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(offer, encoding="utf-8")
    print(f"pairing code / ペアリングコード:  {core_pairing.format_code(pending.code)}")
    print(f"standby {pending.offer.appliance} at {pending.offer.address}, "
          f"offer {pending.offer.fingerprint}, "
          f"valid until {pending.offer.expires.isoformat(timespec='seconds')}")
    print("type this code on the primary's pairing page; do not send it over the network")
    if args.serve:
        return _serve_offer(args, keys_dir, pending.offer.expires)
    if not args.output:
        print(offer, end="")
    return 0


def cmd_ha_unpair(args: argparse.Namespace) -> int:
    """On a paired standby: forget the root key and the pairing (re-pairing)."""
    from kura import config
    from kura.vault import pairing

    cfg = config.load(args.config)
    keys_dir = cfg.vault.keys_dir
    if not args.yes:
        print(f"kura ha unpair: this removes the sealed root key and the pairing in {keys_dir}; "
              "stop kura-vault and drop this node from the formation first "
              "(pg_autoctl drop node), then run again with --yes", file=sys.stderr)
        return 2
    paired = pairing.unpair(keys_dir)
    print(f"unpaired from {paired.get('primary', 'the primary')}: the root key and the pairing "
          f"are gone from {keys_dir}; pair again with kura ha offer --serve")
    return 0


def _serve_offer(args: argparse.Namespace, keys_dir: Path, expires: datetime) -> int:
    """Wait on the pairing port for the primary (kura.pairingserver)."""
    from kura import pairingserver

    def ready(fingerprint: str) -> None:
        print(f"waiting for the primary on port {port} "
              f"(certificate {fingerprint}) / プライマリ機からの接続を待っています", flush=True)

    server = pairingserver.PairingServer(keys_dir, seal_mode=args.seal, with_key=args.with_key)
    host, port = pairingserver.endpoint(args.address)
    port = args.port or port
    paired = asyncio.run(pairingserver.serve(server, args.listen or host, port, [host],
                                             expires, ready))
    if not paired or server.paired is None:
        print("kura ha offer: no envelope opened before the offer ran out: "
              "make a new offer with --new", file=sys.stderr)
        return 1
    mode = args.seal or server.paired.seal_mode
    print(f"paired with {server.paired.primary}: root key sealed with {mode} in {keys_dir}")
    return 0


def cmd_ha_accept(args: argparse.Namespace) -> int:
    """The standby's second half: open the envelope and seal the root key."""
    import json
    from datetime import UTC, datetime

    from kura import config
    from kura.vault import pairing

    cfg = config.load(args.config)
    source = sys.stdin if args.envelope == "-" else None
    try:
        text = source.read() if source else Path(args.envelope).read_text(encoding="utf-8")
        body = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KuraError(
            f"cannot read the envelope {args.envelope}: {type(exc).__name__}",
            f"封筒 {args.envelope} を読めません。",
        ) from None
    params = pairing.accept(cfg.vault.keys_dir, body, datetime.now(UTC), seal_mode=args.seal,
                            with_key=args.with_key)
    mode = args.seal or params.seal_mode
    print(f"paired with {params.primary}: root key sealed with {mode} in {cfg.vault.keys_dir}")
    if mode == "shamir":
        print("the primary's custodians unseal this standby with the shares they already hold")
    paired = cfg.vault.keys_dir / pairing.PAIRED_FILE
    print(f"pairing parameters (monitor, CA certificate): {paired}")
    return 0


def _export_password(args: argparse.Namespace) -> str:
    """The SA's password without putting it in argv (ps, shell history): from
    file descriptor ``--password-fd`` (first line), else $KURA_PASSWORD, else
    asked on the terminal — so that a cron job or a script can export too."""
    if args.password_fd is not None:
        try:
            with os.fdopen(args.password_fd, encoding="utf-8", closefd=False) as source:
                password = source.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise KuraError(
                f"cannot read the password from file descriptor {args.password_fd}: "
                f"{type(exc).__name__}",
                f"ファイル記述子 {args.password_fd} からパスワードを読めません。",
            ) from None
    elif "KURA_PASSWORD" in os.environ:
        password = os.environ["KURA_PASSWORD"]
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
    else:
        raise KuraError(
            "no terminal to ask the password on: give it with --password-fd N or $KURA_PASSWORD",
            "パスワードを尋ねる端末がありません。--password-fd N または環境変数 KURA_PASSWORD"
            " で渡してください。",
        )
    if not password:
        raise KuraError("the password is empty", "パスワードが空です。")
    return password


def cmd_audit_export(args: argparse.Namespace) -> int:
    from kura import config
    from kura.console.vaultclient import VaultClient

    cfg = config.load(args.config)
    password = _export_password(args)
    totp = args.totp or os.environ.get("KURA_TOTP", "").strip()

    async def export() -> dict[str, object]:
        client = VaultClient(cfg.vault.socket, 1)
        try:
            login = await client.call(
                "login",
                {
                    "username": args.user,
                    "password": password,
                    **({"totp": totp} if totp else {}),
                },
            )
            token = str(login["token"])
            try:
                return await client.call("audit.export", {}, token, "local")
            finally:
                await client.call("logout", {}, token, "local")
        finally:
            await client.close()

    result = asyncio.run(export())
    Path(args.output).write_bytes(base64.b64decode(str(result["bundle"])))
    print(f"wrote {args.output}: {result['entries']} entries, sha256 {result['sha256']}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: intact (faults the chain itself records as acknowledged
    incidents are listed, not counted); 1: unrecorded faults, every one
    listed; 3: with --after, NEW does not extend OLD (each fault named)."""
    from kura.core import audit

    trusted = bytes.fromhex(args.public_key) if args.public_key else None
    report = audit.verify_bundle(Path(args.bundle), trusted)
    if report.ok:
        print(f"OK: {report.entries} entries, {report.checkpoints} signed checkpoints")
        for fp in report.public_key_fingerprints:
            print(f"signing key: {fp}")
        code = 0
    else:
        where = f" at entry {report.first_bad_seq}" if report.first_bad_seq is not None else ""
        print(f"NG{where}: {report.problem_en}")
        print(f"    {report.problem_ja}")
        if report.faults:
            print(f"faults: {len(report.faults)}")
            for fault in report.faults:
                print(f"  - {fault.en}")
                print(f"    {fault.ja}")
        code = 1
    for fault, incident in report.recorded:
        who = ", ".join(incident.acknowledged_by) or "not yet acknowledged / 未確認"
        print(f"recorded incident (entry {incident.seq}, acknowledged by {who}): {fault.en}")
        print(f"    記録済みの障害（記録 {incident.seq}）: {fault.ja}")
    if args.after:
        extends = _verify_after(Path(args.after), report, trusted)
        return 3 if not extends else code
    return code


def _verify_after(old_path: Path, new: object, trusted: bytes | None) -> bool:
    """Print whether NEW (its report) extends the export OLD; True if it does."""
    from kura.core import audit
    from kura.core.errors import AuditBundleMalformed

    assert isinstance(new, audit.VerifyReport)
    old_report = audit.verify_bundle(old_path, trusted)
    try:
        old = audit.read_bundle(old_path)
    except AuditBundleMalformed as exc:
        print(f"NG: --after {old_path}: {exc.message_en}\n    {exc.message_ja}")
        return False
    if new.hashes is None:
        print(f"NG: cannot compare with {old_path}: the new bundle could not be read")
        return False
    faults = audit.extension_faults(old.entries, old.final, new.hashes, new.altered)
    signers = {cp.public_key for cp in [*old.checkpoints, old.final]}
    if not audit.checkpoint_valid(old.final) or (trusted is not None and signers != {trusted}):
        faults.insert(0, audit.Fault("bad_signature", old.final.seq, old.final.seq))
    if faults:
        print(f"NG: does not extend {old_path} (its export checkpoint at entry "
              f"{old.final.seq}): {len(faults)} fault(s)")
        for fault in faults:
            print(f"  - {fault.en}")
            print(f"    {fault.ja}")
        return False
    note = "" if old_report.ok else " (the older export itself has faults)"
    print(f"extends {old_path}: its {len(old.entries)} entries are unchanged and its "
          f"export checkpoint at entry {old.final.seq} matches{note}")
    return True


def cmd_boot_report(args: argparse.Namespace) -> int:
    from kura import bootreport, config

    # Before the first boot's set-up there is no configuration: the vault is "down".
    socket = (config.load(args.config).vault.socket if Path(args.config).exists()
              else Path("/run/kura/vault.sock"))
    print(bootreport.report(socket), flush=True)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from kura import devserver

    state = Path(args.state or os.environ.get("KURA_STATE_DIR") or "state")
    port = int(args.port or os.environ.get("KURA_PORT") or 8443)
    seal = args.seal or os.environ.get("KURA_SEAL") or "host"
    return devserver.main(state, port, seal, os.environ.get("KURA_DA_PASSWORD"))


# Four or more digits, possibly split by hyphens or spaces of either width.
_DIGIT_RUN = re.compile(r"\d(?:[ \u3000\-\u2010-\u2015\u2212\uff0d\u30fc]*\d){3,}")


class _Parser(argparse.ArgumentParser):
    """argparse quotes the arguments it refuses; a number typed on the command
    line by mistake must not be printed back (the terminal may be logged)."""

    def error(self, message: str) -> NoReturn:
        super().error(_DIGIT_RUN.sub("****", message))


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kura", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "check-number",
        help="check numbers read from standard input",
        description="Read My Numbers (or corporate numbers) from standard input, "
        "one per line, and print OK or NG with the reason for each line. Exit 0 "
        "only if all are valid. Numbers are never taken from the command line.",
    )
    c.add_argument("--corporate", action="store_true", help="corporate numbers (13 digits)")
    c.add_argument("--english", action="store_true", help="reasons in English only")
    c.set_defaults(func=cmd_check_number)

    db = sub.add_parser("db", help="the database").add_subparsers(dest="db", required=True)
    m = db.add_parser("migrate", help="apply schema migrations (uses [database] owner_dsn)")
    m.add_argument("--config")
    m.set_defaults(func=cmd_db_migrate)

    vault = sub.add_parser("vault", help="the vault").add_subparsers(dest="vault", required=True)
    i = vault.add_parser(
        "init",
        help="make the root key and seal it",
        description="Make a new root key and seal it: to M-of-N custodian "
        "shares (SLIP-39), with systemd-creds (TPM2 or host key), or to a "
        "host-only file for development (does NOT survive disk theft).",
    )
    i.add_argument("--config")
    i.add_argument("--seal", choices=["shamir", "creds", "host"], default="shamir")
    i.add_argument("--threshold", type=int, default=3, help="M: shares needed (default 3)")
    i.add_argument("--shares", type=int, default=5, help="N: shares made (default 5)")
    i.add_argument("--with-key", default="auto", help="systemd-creds key: auto, tpm2, host")
    i.add_argument(
        "--recovery",
        action="store_true",
        help="with --seal creds: also make M-of-N recovery shares",
    )
    i.set_defaults(func=cmd_vault_init)

    ha = sub.add_parser("ha", help="the HA pair").add_subparsers(dest="ha", required=True)
    o = ha.add_parser(
        "offer",
        help="on a new standby: make a pairing offer and show its code",
        description="Make this standby's pairing offer (valid 15 minutes) and show the "
        "pairing code. The offer goes to the primary (it is not secret); the code does "
        "not: the DA reads it here and types it on the primary. Run again to show the "
        "same offer, or with --new to replace it.",
    )
    o.add_argument("--config")
    o.add_argument("--address", required=True, help="this standby's address, as the primary "
                   "reaches it (HOST, or HOST:PORT when the pairing port is not 8444)")
    o.add_argument("--name", help="this standby's appliance name (default: from the config)")
    o.add_argument("-o", "--output", help="write the offer (JSON) here instead of printing it")
    o.add_argument("--new", action="store_true", help="replace a pending offer")
    o.add_argument("--serve", action="store_true",
                   help="then wait on the pairing port until the primary's console delivers "
                   "the envelope (or the offer expires), and seal the key as accept does")
    o.add_argument("--listen", help="with --serve: the address to listen on (default: the "
                   "--address)")
    o.add_argument("--port", type=int, help="with --serve: the pairing port (default: the "
                   "--address's port, else 8444)")
    o.add_argument("--seal", choices=["shamir", "creds", "host"],
                   help="with --serve: seal differently from the primary")
    o.add_argument("--with-key", default="auto",
                   help="with --serve: systemd-creds key: auto, tpm2, host")
    o.set_defaults(func=cmd_ha_offer)
    a = ha.add_parser(
        "accept",
        help="on that standby: open the primary's envelope and seal the root key",
        description="Open the envelope the primary made for this standby's offer, check "
        "the root key and seal it: by default as the primary is sealed (custodian shares: "
        "the same shares; creds: this appliance's own TPM or host key). Three refused "
        "envelopes spend the offer.",
    )
    a.add_argument("--config")
    a.add_argument("envelope", help="the envelope file (JSON), or - for standard input")
    a.add_argument("--seal", choices=["shamir", "creds", "host"],
                   help="seal differently from the primary")
    a.add_argument("--with-key", default="auto", help="systemd-creds key: auto, tpm2, host")
    a.set_defaults(func=cmd_ha_accept)
    u = ha.add_parser(
        "unpair",
        help="on a paired standby: forget the root key and the pairing",
        description="Remove this standby's sealed root key, the pairing's parameters and "
        "the audit head it followed, so that it can be paired again. Stop kura-vault and "
        "drop the node from the formation (pg_autoctl drop node) first.",
    )
    u.add_argument("--config")
    u.add_argument("--yes", action="store_true", help="really remove them")
    u.set_defaults(func=cmd_ha_unpair)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit", required=True
    )
    e = audit.add_parser(
        "export",
        help="export a verifiable bundle (needs an SA account)",
        description="Sign in as an SA and download the audit bundle. The password is read"
        " from --password-fd N (first line), else $KURA_PASSWORD, else asked on the"
        " terminal; the TOTP code from --totp or $KURA_TOTP. Without a terminal (cron,"
        " a script) give both.",
    )
    e.add_argument("--config")
    e.add_argument("--user", required=True, help="an SA's user name")
    e.add_argument(
        "--password-fd",
        type=int,
        metavar="N",
        help="read the SA's password from file descriptor N (e.g. 3 with 3<file)",
    )
    e.add_argument("--totp", help="the SA's current TOTP code, if required (or $KURA_TOTP)")
    e.add_argument("-o", "--output", required=True)
    e.set_defaults(func=cmd_audit_export)
    v = audit.add_parser(
        "verify",
        help="verify a bundle offline; lists every fault",
        description="Verify an export bundle offline: every entry, every signed "
        "checkpoint and the export checkpoint. Lists every fault; faults the chain "
        "itself records (audit.integrity_fault entries under a signed checkpoint) "
        "are shown as recorded incidents with who acknowledged them. Exit 0: "
        "intact; 1: unrecorded faults; 3: with --after, the bundle does not "
        "extend the older export.",
    )
    v.add_argument("bundle")
    v.add_argument("--public-key", help="trust only this signing key (hex)")
    v.add_argument(
        "--after",
        metavar="OLD",
        help="an older export: prove this bundle extends it (every entry of OLD "
        "unchanged at the same seq, its export checkpoint matched)",
    )
    v.set_defaults(func=cmd_audit_verify)

    b = sub.add_parser("boot-report", help="one status line for the console (on the appliance)")
    b.add_argument("--config", default="/etc/kura/kura.toml")
    b.set_defaults(func=cmd_boot_report)

    d = sub.add_parser("dev", help="run a local appliance (what ./build.sh dev runs)")
    d.add_argument("--state", help="state folder (default ./state or $KURA_STATE_DIR)")
    d.add_argument("--port", type=int, help="HTTPS port (default 8443 or $KURA_PORT)")
    d.add_argument("--seal", help="host (default), creds, or shamir:M/N")
    d.set_defaults(func=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KuraError as exc:
        print(f"kura: {exc.message_en}\n      {exc.message_ja}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Policy push benchmark (issue 12): how long from the SA saving an endpoint policy until
every connected agent enforces it, with 200 agents on the stream.

The set-up, all on this machine (root; iproute2, nftables and python3-nftables):

- a whole local appliance (``kura.devserver``: PostgreSQL, kura-vault, kura-console) and an
  SA signed in as users are (first DA, then an SA through a second person's approval);
- a small LAN of network namespaces (``kb-*``, from tests/agents/topology.py): kura-policy
  runs in ``kb-appl`` on 10.86.0.1:8445 (the devserver's own one is stopped, so ONE
  kura-policy serves every agent), talking to the vault over its Unix socket;
- ``--agents`` simulated agents in this process, in namespace ``kb-sim``: each enrols for
  real (``kura.agent.enrol.enroll``: its own ECDSA key and CSR, a one-time token, the
  pinned CA) and holds its own mTLS WebSocket on ``/kura-agent/v1/stream``, verifies every
  bundle it is sent (``kura.core.bundle.verify``) and sends a heartbeat every 30 s;
- ``--real`` real ``kura-agent run`` processes, each in its own namespace ``kb-aN``,
  enrolled with ``kura-agent enroll`` and enforcing nftables there.

Measured: ``--saves`` times, the SA saves the clerk-pc policy with one more allowed
destination (``agents.policy_set`` over the vault's socket) and the clock runs until every
simulated agent has received and verified the new bundle AND every real agent has it in
its kernel (its ``bundle.json``, which kura-agent writes only after nftables took the
transaction; each save is then checked against ``nft -j list table inet kura_agent``).
Beside it, in the same run: applying the same ruleset (``kura.agent.rules.ruleset`` of
the bundle's body, as JSON) with ``nft -j -f`` in a namespace, ``--saves`` times. And the
appliance's memory (RSS and PSS of kura-vault, kura-policy, PostgreSQL) and CPU over the
saves.

Run: ``PYTHONPATH=$PWD/daemons:$PWD nice -n 5 .venv/bin/python -m benchmarks.bench_policy_push``
(``--help`` for options). Not run by the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.agents.topology import Lan
from tests.support import first_da, provision

from benchmarks.common import _children, _cpu_seconds, appliance, machine, percentile, table
from kura.agent import enrol, nft, rules
from kura.agent.state import State
from kura.console.vaultclient import VaultClient
from kura.core import bundle
from kura.devserver import LocalAppliance

TOP = Path(__file__).resolve().parent.parent
PREFIX = "kb"
SUBNET = "10.86.0"
POLICY_ADDRESS = f"{SUBNET}.1"
POLICY_PORT = 8445
PROFILE = "clerk-pc"
CLONE_NEWNET = 0x40000000
HEARTBEAT_SECONDS = 30.0


def child_env() -> dict[str, str]:
    path = os.pathsep.join([str(TOP / "daemons"), str(TOP), *sys.path[1:]])
    return {**os.environ, "PYTHONPATH": path}


# --- namespaces ---------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """This thread in network namespace ``namespace`` (sockets opened meanwhile stay
    there), back in the original one afterwards, also on an error."""
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


# --- the agents -----------------------------------------------------------------------


@dataclass(eq=False)
class Simulated:
    """One enrolled agent reduced to the wire: its own key and certificate, a stream."""

    state: State
    key: Any = None
    context: ssl.SSLContext | None = None
    serial: int = 0
    received: dict[int, float] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    errors: int = 0

    def load(self) -> None:
        identity = self.state.identity()
        self.key = bundle.public_key_from_text(identity.bundle_key)
        self.context = enrol.pinned_context(self.state.ca.read_text())
        self.context.load_cert_chain(self.state.cert, self.state.key)

    async def run(self, session: aiohttp.ClientSession, url: str) -> None:
        assert self.context is not None
        while True:
            try:
                async with session.ws_connect(url, ssl=self.context, heartbeat=20.0) as ws:
                    beats = asyncio.create_task(self._beats(ws))
                    try:
                        async for message in ws:
                            if message.type != aiohttp.WSMsgType.TEXT:
                                break
                            data = json.loads(message.data)
                            if data.get("type") == "bundle":
                                got = bundle.verify(data["bundle"], self.key)
                                now = time.monotonic()
                                self.received.setdefault(got.serial, now)
                                if got.serial > self.serial:
                                    self.serial, self.body = got.serial, got.body
                    finally:
                        beats.cancel()
            except (aiohttp.ClientError, OSError, bundle.Refused) as exc:
                self.errors += 1
                print(f"simulated agent: {exc}", file=sys.stderr)
            await asyncio.sleep(1.0)

    async def _beats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await asyncio.sleep(random.uniform(0, HEARTBEAT_SECONDS))
        while True:
            await ws.send_json({"type": "heartbeat", "report": {
                "policy_serial": self.serial or None, "os_release": "Debian GNU/Linux 12",
                "security_updates": 0, "disk_encrypted": True, "usb_events": [],
                "refused": [], "usbguard": "enforced"}})
            await asyncio.sleep(HEARTBEAT_SECONDS)


def enforced_serial(state: Path) -> int:
    """The serial in a real agent's bundle.json (written after nftables took it)."""
    try:
        envelope = json.loads((state / "bundle.json").read_text())
        return int(json.loads(base64.b64decode(envelope["body"]))["serial"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def nft_table(namespace: str) -> str:
    return subprocess.run(["ip", "netns", "exec", namespace, "nft", "-j", "list", "table",
                           "inet", rules.TABLE], capture_output=True, text=True, timeout=30,
                          check=False).stdout


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds:.0f} s")
        await asyncio.sleep(0.1)


# --- the appliance's share ----------------------------------------------------------


def _smaps(pid: int) -> tuple[int, int]:
    """RSS and PSS of one process in KiB (0, 0 if it has gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class Parts:
    """The appliance's processes: kura-vault, kura-policy, PostgreSQL (postmaster and
    backends), and this benchmark's own process (the simulated agents)."""

    def __init__(self, app: LocalAppliance, policy_pid: int) -> None:
        self.app, self.policy_pid = app, policy_pid

    def pids(self) -> dict[str, list[int]]:
        postmaster = self.app.cluster.postmaster_pid()
        return {"kura-vault": [self.app.procs["vault"].pid], "kura-policy": [self.policy_pid],
                "postgres": [postmaster, *_children(postmaster)],
                "simulated agents (this process)": [os.getpid()]}

    def cpu(self) -> dict[str, float]:
        postmaster = self.app.cluster.postmaster_pid()
        out = {name: sum(_cpu_seconds(p) for p in pids) for name, pids in self.pids().items()}
        out["postgres"] += _cpu_seconds(postmaster, reaped=True) - _cpu_seconds(postmaster)
        return out

    def memory(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, pids in self.pids().items():
            sizes = [_smaps(p) for p in pids]
            out[name] = (sum(s[0] for s in sizes), sum(s[1] for s in sizes))
        return out


# --- the run ------------------------------------------------------------------------


@dataclass
class Results:
    push: list[float] = field(default_factory=list)  # saved → enforced on all, seconds
    simulated: list[float] = field(default_factory=list)
    real: list[float] = field(default_factory=list)
    save_call: list[float] = field(default_factory=list)
    nft: list[float] = field(default_factory=list)
    libnft: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    idle_cpu: dict[str, float] = field(default_factory=dict)  # connected, no saves
    idle_wall: float = 0.0
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    enrol_seconds: float = 0.0
    errors: int = 0


async def measure(args: argparse.Namespace, app: LocalAppliance, lan: Lan, sa_token: str,
                  work: Path, policy_pid: int) -> Results:
    results = Results()
    vault = VaultClient(app.socket, 1)
    server = f"https://{POLICY_ADDRESS}:{POLICY_PORT}"
    try:
        ca = await vault.call("agents.ca", {}, None, "local")

        async def token(label: str) -> str:
            made = await vault.call("agents.token_create",
                                    {"profile": PROFILE, "label": label, "minutes": 60},
                                    sa_token, "local")
            return str(made["token"])

        # The real agents: kura-agent's own command line in each namespace.
        real: list[Path] = []
        for n in range(args.real):
            state = work / f"real-{n}"
            done = await asyncio.to_thread(subprocess.run, [
                "ip", "netns", "exec", lan.ns(f"a{n}"), sys.executable, "-m", "kura.agent",
                "enroll", "--server", server, "--token", "-",  # the token on stdin
                "--fingerprint", ca["fingerprint"], "--hostname", f"kb-a{n}",
                "--state", str(state)], input=await token(f"real-{n}") + "\n",
                capture_output=True, text=True, timeout=120, check=False, env=child_env())
            if done.returncode != 0:
                raise RuntimeError(f"kura-agent enroll in kb-a{n}: {done.stderr.strip()}")
            log = open(work / f"real-{n}.log", "w")  # noqa: SIM115 (the child owns it)
            lan.spawn(f"a{n}", [sys.executable, "-m", "kura.agent", "run", "--state",
                                str(state), "--usbguard-rules", str(state / "usbguard.conf")],
                      stdout=log, stderr=subprocess.STDOUT, env=child_env())
            log.close()
            real.append(state)

        # The simulated agents: the same enrolment code, in threads, a few at once.
        began = time.monotonic()
        gate = asyncio.Semaphore(args.parallel)

        async def enrolled(n: int) -> Simulated:
            async with gate:
                state = State(work / f"sim-{n}")
                secret = await token(f"sim-{n}")
                await asyncio.to_thread(enrol.enroll, state, server, secret,
                                        ca["fingerprint"], f"sim-{n}")
                agent = Simulated(state)
                agent.load()
                return agent

        sims = await asyncio.gather(*(enrolled(n) for n in range(args.agents)))
        results.enrol_seconds = time.monotonic() - began
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            url = f"{server}/kura-agent/v1/stream"
            tasks = [asyncio.create_task(a.run(session, url)) for a in sims]
            try:
                await wait_for(lambda: all(a.serial for a in sims)
                               and all(enforced_serial(s) for s in real), 180,
                               "every agent enforcing its first bundle")
                print(f"{len(sims)} simulated + {len(real)} real agents connected "
                      f"(enrolment of the simulated ones: {results.enrol_seconds:.1f} s)",
                      file=sys.stderr, flush=True)
                await asyncio.sleep(2)
                await saves(args, vault, sa_token, sims, real, lan, app, policy_pid, results)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        results.errors = sum(a.errors for a in sims)
        # The baseline: the same ruleset straight into the kernel with nft -f.
        ruleset = work / "ruleset.json"
        ruleset.write_text(json.dumps(rules.ruleset(sims[0].body)))
        for _ in range(args.saves):
            started = time.monotonic()
            await asyncio.to_thread(subprocess.run, ["ip", "netns", "exec", lan.ns("base"),
                                                     "nft", "-j", "-f", str(ruleset)],
                                    check=True, timeout=30)
            results.nft.append(time.monotonic() - started)
        # And as kura-agent applies it: libnftables in-process, no new process.
        transaction = rules.ruleset(sims[0].body)
        with inside(lan.ns("base")):
            for _ in range(args.saves):
                started = time.monotonic()
                nft.run(transaction)
                results.libnft.append(time.monotonic() - started)
    finally:
        await vault.close()
    return results


async def saves(args: argparse.Namespace, vault: VaultClient, sa_token: str,
                sims: list[Simulated], real: list[Path], lan: Lan, app: LocalAppliance,
                policy_pid: int, results: Results) -> None:
    parts = Parts(app, policy_pid)
    cpu_before, wall_before = parts.cpu(), time.monotonic()
    await asyncio.sleep(args.idle)
    cpu_after, wall_after = parts.cpu(), time.monotonic()
    results.idle_wall = wall_after - wall_before
    results.idle_cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
    cpu_before, wall_before = cpu_after, wall_after
    for i in range(args.saves):
        current = await vault.call("agents.policy_get", {"profile": PROFILE}, sa_token, "local")
        policy = dict(current["policy"])
        destination = f"198.51.100.{i % 250 + 1}/32"
        policy["allow"] = [{"to": destination, "proto": "tcp", "ports": [443 + i]}]
        started = time.monotonic()
        saved = await vault.call("agents.policy_set",
                                 {"profile": PROFILE, "policy": policy,
                                  "tests": current["tests"], "version": current["version"]},
                                 sa_token, "local")
        results.save_call.append(time.monotonic() - started)
        serial = int(saved["serial"])
        seen: dict[Path, float] = {}
        deadline = started + 60
        while not all_have(serial, sims, real, seen):
            if time.monotonic() > deadline:
                late = sum(a.serial < serial for a in sims) + len(real) - len(seen)
                raise TimeoutError(f"save {i + 1}: {late} agent(s) without serial {serial}")
            await asyncio.sleep(0.002)
        sim_all = max(a.received[serial] for a in sims) - started if sims else 0.0
        real_all = max(seen.values()) - started if real else 0.0
        results.simulated.append(sim_all)
        results.real.append(real_all)
        results.push.append(max(sim_all, real_all))
        # Not timed: the rule really is in each real agent's kernel table.
        comment = f"allow {destination} tcp {443 + i}"
        for n in range(len(real)):
            listed = await asyncio.to_thread(nft_table, lan.ns(f"a{n}"))
            if comment not in listed:
                raise AssertionError(f"kb-a{n}: serial {serial} stored but not in nftables")
        print(f"save {i + 1}/{args.saves}: serial {serial}, all enforced after "
              f"{results.push[-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
        await asyncio.sleep(args.pause)
    cpu_after = parts.cpu()
    results.wall = time.monotonic() - wall_before
    results.cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
    results.memory = parts.memory()


def all_have(serial: int, sims: list[Simulated], real: list[Path],
             seen: dict[Path, float]) -> bool:
    """Whether every agent has ``serial``; notes in ``seen`` when a real one got it."""
    for state in real:
        if state not in seen and enforced_serial(state) >= serial:
            seen[state] = time.monotonic()
    return len(seen) == len(real) and all(a.serial >= serial for a in sims)


def start_policy(app: LocalAppliance, lan: Lan, work: Path, nofile: int) -> int:
    """kura-policy in kb-appl, configured as the devserver's but on the LAN's address,
    with at most ``nofile`` open files (systemd's default soft limit for a unit
    without LimitNOFILE= is 1024: each agent on the stream holds one)."""
    app.stop_daemon("policy")
    text = app.config_path.read_text().split("\n[policy]")[0]
    config = work / "kura-policy.toml"
    config.write_text(text + f'\n[policy]\nlisten = "{POLICY_ADDRESS}"\nport = {POLICY_PORT}\n'
                      'retry_seconds = 0.5\n')
    log = open(work / "kura-policy.log", "w")  # noqa: SIM115 (the child owns it)
    proc = lan.spawn("appl", [sys.executable, "-m", "kura.policy.main", "--config",
                              str(config)], stdout=log, stderr=subprocess.STDOUT,
                     env=child_env(), preexec_fn=lambda: _limit_files(nofile))
    log.close()
    deadline = time.monotonic() + 60
    while not lan.reaches("sim", POLICY_ADDRESS, POLICY_PORT, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("kura-policy did not start in kb-appl:\n"
                               + (work / "kura-policy.log").read_text()[-2000:])
        time.sleep(0.2)
    # ip netns exec executes the command in place: the pid is kura-policy's own.
    assert "kura.policy.main" in Path(f"/proc/{proc.pid}/cmdline").read_text()
    return proc.pid


def _limit_files(nofile: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))


def ms(values: list[float], p: float) -> float:
    return percentile(sorted(values), p) * 1000


def report(args: argparse.Namespace, r: Results) -> None:
    print()
    print(f"Policy push, {args.agents} simulated + {args.real} real agents, {args.saves} saves; "
          f"{machine()}; kura-policy's open-file limit {args.policy_nofile}")
    print()
    rows = [
        ("saved → enforced on ALL agents", ms(r.push, 50), ms(r.push, 99), max(r.push) * 1000),
        (f"  … on the {args.agents} simulated (received, verified)", ms(r.simulated, 50),
         ms(r.simulated, 99), max(r.simulated) * 1000),
        (f"  … on the {args.real} real (in nftables)", ms(r.real, 50), ms(r.real, 99),
         max(r.real) * 1000),
        ("  agents.policy_set call alone", ms(r.save_call, 50), ms(r.save_call, 99),
         max(r.save_call) * 1000),
        ("nft -j -f of the same ruleset (baseline)", ms(r.nft, 50), ms(r.nft, 99),
         max(r.nft) * 1000),
        ("  libnftables in-process, as kura-agent does", ms(r.libnft, 50), ms(r.libnft, 99),
         max(r.libnft) * 1000),
    ]
    print(table(("ms", "p50", "p99", "max"), rows))
    print(f"\nratio push / nft -f: p50 {ms(r.push, 50) / ms(r.nft, 50):.1f}x, "
          f"p99 {ms(r.push, 99) / ms(r.nft, 99):.1f}x")
    print()
    def row(name: str, names: list[str]) -> tuple[str, float, float, float, float, float]:
        cpu, idle = sum(r.cpu[n] for n in names), sum(r.idle_cpu[n] for n in names)
        extra = (cpu - idle * r.wall / r.idle_wall) / len(r.push)
        return (name, sum(r.memory[n][0] for n in names) / 1024,
                sum(r.memory[n][1] for n in names) / 1024, idle / r.idle_wall * 100,
                cpu / r.wall * 100, extra * 1000)

    rows2 = [row(name, [name]) for name in r.memory]
    rows2.append(row("appliance (vault + policy + postgres)",
                     [n for n in r.memory if not n.startswith("simulated")]))
    print(table(("process", "RSS MiB", "PSS MiB", "CPU % idle", "CPU % saving",
                 "CPU ms/save"), rows2))
    print(f"\n(CPU as % of one core: 'idle' over {r.idle_wall:.0f} s connected without saves "
          f"(heartbeats only), 'saving' over the {r.wall:.0f} s of the saves; CPU ms/save is "
          f"what a save cost beyond idle. Memory after the saves. Stream reconnects of "
          f"simulated agents: {r.errors})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (200)")
    parser.add_argument("--real", type=int, default=5, help="real kura-agent processes (5)")
    parser.add_argument("--saves", type=int, default=20, help="policy saves measured (20)")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds between saves (1)")
    parser.add_argument("--idle", type=float, default=15.0,
                        help="seconds connected without saves, for the idle CPU (15)")
    parser.add_argument("--policy-nofile", type=int, default=1024,
                        help="kura-policy's open-file limit (1024: what systemd gives "
                        "kura-policy.service, which sets no LimitNOFILE=)")
    parser.add_argument("--parallel", type=int, default=8,
                        help="simulated enrolments at once (8)")
    args = parser.parse_args(argv)
    if not 0 <= args.agents <= 2000 or not 1 <= args.real <= 20 or not 1 <= args.saves <= 500:
        parser.error("--agents 0..2000, --real 1..20, --saves 1..500")
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        print("needs root, iproute2 and nftables", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C: every namespace, process and folder goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="kura-bench-push-"))
    os.chmod(work, 0o755)  # noqa: S103 (kura-agent in a namespace is root too; tidy)
    try:
        with appliance("push") as app, Lan(PREFIX) as lan:
            da = first_da(app)
            sa = provision(da, "bench-sa", "SA")
            assert sa.token
            lan.add("appl", POLICY_ADDRESS)
            lan.add("sim", f"{SUBNET}.2")
            lan.add("base", f"{SUBNET}.3")
            for n in range(args.real):
                lan.add(f"a{n}", f"{SUBNET}.{10 + n}")
            policy_pid = start_policy(app, lan, work, args.policy_nofile)
            print("appliance up, kura-policy in kb-appl", file=sys.stderr, flush=True)
            with inside(lan.ns("sim")):
                results = asyncio.run(measure(args, app, lan, sa.token, work, policy_pid))
            report(args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())

"""A small LAN in network namespaces for the endpoint-agent tests: one switch
(a bridge in its own namespace) and hosts joined to it by veth pairs, each
with one address in 192.0.2.0/24 (TEST-NET-1, never routed). Connections are
real TCP between namespaces, so what nftables in a host's namespace lets
through is what a user would see."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

PREFIX_LEN = 24

# A TCP server that accepts and closes, for each port on its command line, on
# every IPv4 and IPv6 address (tests/test_agent_enforce.py uses it too).
LISTENER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port)); s.listen(64)
        while True:
            c, _ = s.accept(); c.close()
    for p in sys.argv[1:]:
        threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)

# Exit 0 if a TCP connection to argv[1]:argv[2] opens within argv[3] seconds.
_PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


@dataclass
class Lan:
    prefix: str
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def __enter__(self) -> Lan:
        self.remove_leftovers()
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, host: str, address: str) -> str:
        """A host on the LAN with ``address``; returns its namespace's name."""
        ns = self.ns(host)
        index = len(self.hosts)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.switch, "link", "add", f"p{index}", "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", f"p{index}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return ns

    def spawn(self, host: str, argv: list[str], **kw: object) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.ns(host), *argv], text=True, **kw
        )
        self.procs.append(proc)
        return proc

    def listen(self, host: str, *ports: int) -> None:
        """TCP servers on ``ports`` in ``host`` that accept every connection."""
        proc = self.spawn(host, [sys.executable, "-c", LISTENER, *map(str, ports)],
                          stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def reaches(self, source: str, target: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from ``source`` to ``target``:``port`` opens.
        ``target`` is a host name of this LAN or an address."""
        address = self.hosts.get(target, target)
        probe = subprocess.run(
            ["ip", "netns", "exec", self.ns(source), sys.executable, "-c", _PROBE,
             address, str(port), str(timeout)],
            check=False, capture_output=True, timeout=timeout + 30,
        )
        return probe.returncode == 0

    def wait_reaches(self, source: str, target: str, port: int, want: bool,
                     within: float) -> float:
        """Seconds until ``reaches`` answers ``want``; AssertionError after ``within``."""
        start = time.monotonic()
        while True:
            if self.reaches(source, target, port, timeout=0.5) == want:
                return time.monotonic() - start
            if time.monotonic() - start > within:
                verb = "reach" if want else "be refused at"
                raise AssertionError(
                    f"{source} did not {verb} {target}:{port} within {within:.0f} s")
            time.sleep(0.2)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
        self.procs.clear()
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
        for line in listed:
            name = line.split(" ")[0]
            if name.startswith(f"{self.prefix}-"):
                for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                sh("ip", "netns", "del", name, check=False)

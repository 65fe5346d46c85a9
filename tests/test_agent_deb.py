"""kura-agent's Debian package: built by packaging/agent/build_deb.py (what
``./build.sh agent-deb`` runs), inspected with dpkg-deb, and its extracted
tree run by the system's /usr/bin/python3 isolated from this checkout, so
that it is proven to carry everything it needs and nothing else of Kura."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).parent.parent
SITE = "usr/lib/python3/dist-packages"
ALLOWED = {"cryptography", "aiohttp", "pyudev", "nftables",
           "sdnotify"}  # sdnotify: optional, imported inside try/except ImportError

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("out")
    done = subprocess.run([sys.executable, str(TOP / "packaging/agent/build_deb.py"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          check=True)
    deb = Path(done.stdout.strip())
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=60)
    return deb, tree


def test_control_and_contents(package: tuple[Path, Path]) -> None:
    deb, _tree = package
    assert deb.name.startswith("kura-agent_") and deb.name.endswith("_all.deb")
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    assert ("Depends: python3 (>= 3.11), python3-aiohttp, python3-cryptography, "
            "python3-nftables, python3-pyudev, nftables") in info
    assert "Recommends: usbguard" in info
    assert "postinst" in info
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    assert {"/usr/bin/kura-agent", f"/{SITE}/kura/core/bundle.py",
            f"/{SITE}/kura/agent/cli.py", "/usr/lib/systemd/system/kura-agent.service",
            "/usr/lib/systemd/system/kura-agent-restore.service"} <= paths
    kura_files = {p for p in paths if p.startswith(f"/{SITE}/kura/") and p.endswith(".py")}
    others = {p for p in kura_files if "/kura/agent/" not in p}
    assert others == {f"/{SITE}/kura/__init__.py", f"/{SITE}/kura/core/__init__.py",
                      f"/{SITE}/kura/core/bundle.py"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_packaged_code_imports_only_what_it_may(package: tuple[Path, Path]) -> None:
    _deb, tree = package
    shipped = {str(p.relative_to(tree / SITE).with_suffix("")).replace("/", ".")
               for p in (tree / SITE).rglob("*.py")}
    for source in (tree / SITE).rglob("*.py"):
        for name in imports(source):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ALLOWED or name == "__future__":
                continue
            assert top == "kura", f"{source.name} imports {name}"
            module = name if name in shipped else name.rpartition(".")[0]
            assert module in shipped, f"{source.name} imports {name}, not in the package"
            assert module == "kura.core.bundle" or module.startswith("kura.agent"), name


def test_the_packaged_command_runs_alone(package: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    """Debian's python3, isolated (-I: no checkout, no user site), finds the
    package's own modules only. The help texts name every command."""
    _deb, tree = package
    system = Path("/usr/bin/python3")
    if not system.exists():
        pytest.skip("no /usr/bin/python3")
    probe = subprocess.run([str(system), "-I", "-c", "import cryptography"],
                           capture_output=True, timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip("this host's python3 lacks cryptography (python3-cryptography)")
    launcher = tree / "usr/bin/kura-agent"
    code = (f"import sys; sys.path.insert(0, {str(tree / SITE)!r}); "
            f"sys.argv = ['kura-agent', *sys.argv[1:]]; "
            f"exec(compile(open({str(launcher)!r}).read(), 'kura-agent', 'exec'))")
    done = subprocess.run([str(system), "-I", "-c", code, "--help"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("enroll", "run", "restore", "status", "apply"):
        assert command in done.stdout
    where = subprocess.run(
        [str(system), "-I", "-c",
         f"import sys; sys.path.insert(0, {str(tree / SITE)!r}); import kura.agent.cli, "
         "kura.agent.enrol, kura.agent.enforce; "
         "print(sorted({m.__file__ for n, m in sys.modules.items() if n.startswith('kura')}))"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert str(TOP) not in where.stdout
    assert str(tree) in where.stdout
    status = subprocess.run([str(system), "-I", "-c", code, "status", "--state",
                             str(tmp_path / "none")], capture_output=True, text=True,
                            timeout=60, check=False, cwd=tmp_path)
    assert (status.returncode, "not enrolled" in status.stderr) == (1, True)

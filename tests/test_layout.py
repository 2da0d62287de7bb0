"""The layout is the architecture: the core and the parsers do no I/O; no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE = ("mdstream/core", "mdstream/providers")
#: Modules that talk to a broker, a database, a cache or the network: never under PURE.
FORBIDDEN = (
    "faust", "mode", "aiokafka", "confluent_kafka", "asyncpg", "redis", "pulsar", "aiohttp",
    "websockets", "boto3", "botocore", "requests", "urllib3", "httpx", "socket", "ssl",
    "ib_async", "mdstream.bus", "mdstream.storage", "mdstream.ingest", "mdstream.services",
    "mdstream.cli", "mdstream.app", "mdstream.settings",
)  # fmt: skip


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = {"agents": "mdstream_agents", "tables": "mdstream_tables"}.get(parts[0], parts[0])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (lazy imports count), except TYPE_CHECKING ones."""
    tree = ast.parse(path.read_text(), str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.append((node.lineno, base))
            # `from mdstream.core import bars` imports the module mdstream.core.bars
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _is(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_core_and_parsers_import_no_io_module_statically() -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for pure in PURE
        for path in sorted((ROOT / pure).rglob("*.py"))
        for line, name in _imports(path)
        if any(_is(name, bad) for bad in FORBIDDEN)
    ]
    assert not offences, "the pure core must not do I/O:\n" + "\n".join(offences)


def test_core_and_parsers_import_with_io_libraries_blocked() -> None:
    """Importing every pure module works in a process where the I/O libraries cannot load."""
    modules = [_module_name(path) for pure in PURE for path in sorted((ROOT / pure).rglob("*.py"))]
    blocked = [m for m in FORBIDDEN if not m.startswith("mdstream") and m not in ("socket", "ssl")]
    script = f"""
import importlib, importlib.abc, importlib.machinery, sys
BLOCKED = {blocked!r}
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"blocked I/O module {{spec.name}}")
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            return importlib.machinery.ModuleSpec(name, Refuse())
        return None
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
assert not leaked, leaked
print(len({modules!r}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) == len(modules) > 40


def _graph() -> dict[str, set[str]]:
    files = [p for top in ("mdstream", "agents", "tables") for p in (ROOT / top).rglob("*.py")]
    names = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        graph[name] = {dep for _, dep in _imports(path) if dep in names and dep != name}
    return graph


def test_no_import_circle() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules (a facade) is not a circle of concepts.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not _is(d, name)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_every_package_is_listed_for_the_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        _module_name(init)
        for top in ("mdstream", "agents", "tables")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == on_disk


def test_wiring_packages_do_not_take_common_names(tmp_path: Path) -> None:
    """Installed, our agents and tables are `mdstream_agents`/`mdstream_tables`: a top-level
    `tables` would shadow PyTables (and `agents` other SDKs) for every user of the environment."""
    script = (
        "import importlib.util as u; "
        "print([str(getattr(u.find_spec(n), 'origin', None)) for n in "
        "('mdstream_agents', 'mdstream_tables', 'agents', 'tables')])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    ours_agents, ours_tables, agents, tables = ast.literal_eval(done.stdout.strip())
    assert ours_agents == str(ROOT / "agents" / "__init__.py")
    assert ours_tables == str(ROOT / "tables" / "__init__.py")
    assert not agents.startswith(str(ROOT)) and not tables.startswith(str(ROOT))


def test_importing_any_module_has_no_side_effect() -> None:
    """Faust's autodiscovery imports every module of the origin package (`mdstream`): none may
    run a command, exit or connect when imported."""
    modules = sorted(_module_name(p) for p in (ROOT / "mdstream").rglob("*.py"))
    script = f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint('ok')"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]

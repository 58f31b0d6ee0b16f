"""The shape of the house: the public names, private modules, and which layer may import
which (docs/architecture.md). These pin the surface so that it grows only on purpose."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import spreadqueue

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "spreadqueue"
PUBLIC_MODULES = {
    "spreadqueue",
    "spreadqueue.testing",
    "spreadqueue.interfaces",
    "spreadqueue.aio",
}

#: spreadqueue.__all__, in its order: constants, classes, functions.
PUBLIC_NAMES = """
    AGREED_MESS CAUSAL_MESS CAUSED_BY_DISCONNECT CAUSED_BY_JOIN CAUSED_BY_LEAVE
    CAUSED_BY_NETWORK FIFO_MESS RELIABLE_MESS SAFE_MESS UNRELIABLE_MESS
    AuthRejected BlockingSender ConnectTimeout ConnectionRejected DeadLettered
    IllegalGroupName IllegalName IllegalService JsonSerializer ManagerService
    MembershipMessage MessageTooLong MsgpackSerializer NameNotUnique NoManager
    PayloadTooLarge QueueError QueueFull QueueNameError QuotaExceeded ReaderStopped
    ReceiveOverflow RegularMessage RejectMessage RemoteError Reply ReplyReader Sender
    SenderStopped SessionBack SessionClosed SessionLost
    SessionReconnecting SpreadError SpreadSession Task
    TaskCancelled TaskError TaskTimeout UnknownFunction VersionRejected Worker WorkerLost
    __version__ connect default_queue default_spread run_in
""".split()


def all_modules() -> Iterator[str]:
    """Every module with Python source. A compiled extension built in place (the
    optional wire/_speedups.c) is left out: it imports no module at all."""
    yield "spreadqueue"
    for info in pkgutil.walk_packages([str(PACKAGE)], "spreadqueue."):
        if module_path(info.name).exists():
            yield info.name


def module_path(name: str) -> Path:
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports_of(name: str) -> set[str]:
    """Modules ``name`` imports at module level (not under TYPE_CHECKING, not inside
    functions): what it needs to be imported at all."""
    path = module_path(name)
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.add(target)
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        found.add(f"{target}.{alias.name}")
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(node.orelse)

    visit(tree.body)
    return found


MODULES = set(all_modules())


def test_the_public_names_are_pinned() -> None:
    assert spreadqueue.__all__ == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(spreadqueue, name) is not None
    testing = importlib.import_module("spreadqueue.testing")
    interfaces = importlib.import_module("spreadqueue.interfaces")
    assert testing.__all__ == ["FakeSpreadNetwork"]
    assert interfaces.__all__ == [
        "IAssignmentPolicy",
        "ISerializer",
        "ISessionLink",
        "ISessionSink",
        "ISpreadSession",
    ]
    aio = importlib.import_module("spreadqueue.aio")
    assert aio.__all__ == ["ReplyReader", "Sender", "Session", "Worker", "connect"]


def test_every_other_module_is_private() -> None:
    public = [m for m in MODULES if not any(p.startswith("_") for p in m.split("."))]
    assert sorted(public) == sorted(PUBLIC_MODULES)
    for name in MODULES:
        importlib.import_module(name)  # and each of them imports


def _layer(module: str) -> str:
    for prefix, layer in (
        ("spreadqueue._spread.wire", "wire"),
        # the Spread errors import nothing: the codec raises them
        ("spreadqueue._spread.errors", "wire"),
        ("spreadqueue._spread", "spread"),
        ("spreadqueue._queue", "queue"),
        ("spreadqueue._defaults", "leaf"),
        ("spreadqueue._version", "leaf"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "service"  # _service, _bench, and the public faces over everything


#: What each layer may import of spreadqueue (its own layer always).
ALLOWED = {
    "leaf": {"leaf"},
    "wire": {"wire"},
    "spread": {"wire", "spread", "leaf"},
    "queue": {"wire", "spread", "queue", "leaf"},
    "service": {"wire", "spread", "queue", "service", "leaf"},
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_only_the_layers_below(module: str) -> None:
    layer = _layer(module)
    ours = {m for m in imports_of(module) if m == "spreadqueue" or m.startswith("spreadqueue.")}
    wrong = sorted(m for m in ours if _layer(m) not in ALLOWED[layer] | {layer})
    assert not wrong, f"{module} ({layer}) imports {wrong}"
    if layer == "wire":  # the codec is sans-IO
        assert not any(m == "twisted" or m.startswith("twisted.") for m in imports_of(module))


def test_there_are_no_import_cycles() -> None:
    graph = {m: {i for i in imports_of(m) if i in MODULES and i != m} for m in MODULES}
    # a package imports its submodules as a face; submodules importing siblings through
    # the package would be a cycle, which is what this finds
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path, m, n])}")
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


IMPORT = re.compile(
    r"^\s*(?:from\s+(spreadqueue[\w.]*)\s+import|import\s+(spreadqueue[\w.]*))", re.M
)


@pytest.mark.parametrize(
    "path",
    [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*.py")),
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_docs_and_examples_import_only_public_modules(path: Path) -> None:
    used = {a or b for a, b in IMPORT.findall(path.read_text())}
    assert used <= PUBLIC_MODULES, f"{path.name} imports {sorted(used - PUBLIC_MODULES)}"

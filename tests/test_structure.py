"""The package's structure, read from its source without importing it: its imports form no cycle,
the checks never reach the runtime, and every module (of ``autograd_lens`` and of ``cli``, which
installs as ``autograd_lens.cli``) says what it holds.

Imports are found in the syntax tree of each file: at module level, in class bodies and inside
functions (the "lazy" imports a cycle can hide behind); an import under ``if TYPE_CHECKING:`` is
for type checkers only and does not count towards a cycle. ``from X import name`` loads the
module ``X.name`` when there is a file for it, else ``X``.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The folders of importable code, by the name each is imported as in this repository.
PACKAGES = ("autograd_lens", "cli")
#: What a check may never import, with their submodules: the runtime that records a training run
#: (hooks, recorder), judges it (judge), composes it (watch), runs scripts (runner) or the CLI.
#: Checks read a context and return findings.
RUNTIME = (
    "autograd_lens.watch",
    "autograd_lens.recorder",
    "autograd_lens.judge",
    "autograd_lens.hooks",
    "autograd_lens.runner",
    "cli",
)


@dataclass(frozen=True)
class Import:
    """One module loading another: where the statement is, and when it runs."""

    source: str  # the importing module
    target: str  # the module it loads
    path: Path
    line: int
    lazy: bool  # inside a function: runs when the function is called
    typing_only: bool  # under ``if TYPE_CHECKING:``: never runs

    @property
    def where(self) -> str:
        kind = ", under TYPE_CHECKING" if self.typing_only else ", in a function" if self.lazy else ""
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}{kind}"


def find_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of :data:`PACKAGES` under ``root``."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def package_aliases(root: Path) -> dict[str, str]:
    """Installed import names of folders mapped in ``pyproject.toml`` (``autograd_lens.cli`` ->
    ``cli``), so that ``import autograd_lens.cli.main`` is seen as loading ``cli.main``."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    dirs = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {name: folder.replace("/", ".") for name, folder in dirs.items() if folder.replace("/", ".") in PACKAGES}


def _installed_to_folder(name: str, aliases: Mapping[str, str]) -> str:
    for installed, folder in aliases.items():
        if name == installed or name.startswith(installed + "."):
            return folder + name[len(installed):]
    return name


def _resolve(name: str, modules: Mapping[str, Path], aliases: Mapping[str, str]) -> str | None:
    """The module of ours that loading ``name`` runs (its longest prefix with a file), or None."""
    name = _installed_to_folder(name, aliases)
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(
    nodes: Iterable[ast.AST], lazy: bool, typing_only: bool
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement in ``nodes`` and below, with whether it runs lazily, or never."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.body, lazy, True)
            yield from _statements(node.orelse, lazy, typing_only)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _statements(ast.iter_child_nodes(node), True, typing_only)
        else:
            yield from _statements(ast.iter_child_nodes(node), lazy, typing_only)


def imports_of(name: str, path: Path, modules: Mapping[str, Path], aliases: Mapping[str, str]) -> list[Import]:
    """The modules of ours that module ``name`` (the file ``path``) imports, one entry per name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[Import] = []
    for stmt, lazy, typing_only in _statements(tree.body, False, False):
        if isinstance(stmt, ast.Import):
            loaded = [alias.name for alias in stmt.names]
        else:
            if stmt.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (stmt.level - 1)])
                base = f"{base}.{stmt.module}" if stmt.module else base
            else:
                base = stmt.module or ""
            # ``from X import name`` loads the submodule X.name when it is one, else X
            loaded = [
                f"{base}.{alias.name}" if _installed_to_folder(f"{base}.{alias.name}", aliases) in modules else base
                for alias in stmt.names
            ]
        for target in loaded:
            resolved = _resolve(target, modules, aliases)
            if resolved is not None and resolved != name:
                out.append(Import(name, resolved, path, stmt.lineno, lazy, typing_only))
    return out


@cache
def all_imports(root: Path = ROOT) -> tuple[Import, ...]:
    modules = find_modules(root)
    aliases = package_aliases(root)
    return tuple(imp for name, path in modules.items() for imp in imports_of(name, path, modules, aliases))


def cycles(imports: Iterable[Import]) -> list[tuple[list[str], list[Import]]]:
    """Each group of modules that import each other, directly or through others (a strongly
    connected component of more than one module), with one shortest cycle through it."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
        edges.setdefault(imp.target, {})
    # Tarjan's algorithm, iterative (no recursion limit on long chains)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return [(group, _shortest_cycle(group, edges)) for group in groups]


def _shortest_cycle(group: list[str], edges: Mapping[str, Mapping[str, Import]]) -> list[Import]:
    """A shortest cycle through the first module of ``group`` (breadth first, inside the group)."""
    members = set(group)
    first = group[0]
    came: dict[str, Import] = {}
    frontier = [first]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w, imp in sorted(edges[v].items()):
                if w == first:
                    path = [imp]
                    while path[0].source != first:
                        path.insert(0, came[path[0].source])
                    return path
                if w in members and w not in came:
                    came[w] = imp
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {first} in {group}")


def describe(cycle: list[Import]) -> str:
    lines = [cycle[0].source]
    lines += [f"  -> {imp.target}    ({imp.where})" for imp in cycle]
    return "\n".join(lines)


def test_imports_form_no_cycle() -> None:
    imports = all_imports()
    kinds = {(imp.source, imp.target): (imp.lazy, imp.typing_only) for imp in imports}
    # the scan sees imports at load, in functions and under TYPE_CHECKING
    assert kinds[("autograd_lens.graph", "autograd_lens.graphfile")] == (False, False)
    assert kinds[("autograd_lens.graph", "autograd_lens.render.dot")] == (True, False)
    assert kinds[("autograd_lens.render.dot", "autograd_lens.graph")] == (False, True)
    runtime = [imp for imp in imports if not imp.typing_only]
    found = cycles(runtime)
    if found:
        pytest.fail(
            "import cycles (imports in functions count; move what both need into a lower module, or import "
            "it under TYPE_CHECKING when only annotations use it):\n"
            + "\n\n".join(f"{len(g)} modules: {', '.join(g)}; one cycle:\n{describe(c)}" for g, c in found),
            pytrace=False,
        )


def _is_runtime(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in RUNTIME)


def _chain_to_runtime(start: str, imports: Iterable[Import]) -> list[Import] | None:
    """The shortest chain of imports (at load or in functions) from ``start`` to a runtime module."""
    edges: dict[str, list[Import]] = {}
    for imp in imports:
        if not imp.typing_only:
            edges.setdefault(imp.source, []).append(imp)
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for imp in edges.get(v, ()):
                if imp.target == start or imp.target in came:
                    continue
                came[imp.target] = imp
                if _is_runtime(imp.target):
                    chain = [imp]
                    while chain[0].source != start:
                        chain.insert(0, came[chain[0].source])
                    return chain
                nxt.append(imp.target)
        frontier = nxt
    return None


def test_checks_never_import_the_runtime() -> None:
    """Not in their own files (type-only imports included), nor through the modules they import."""
    imports = all_imports()
    checks = sorted(m for m in find_modules(ROOT) if m.startswith("autograd_lens.checks"))
    assert "autograd_lens.checks.stray_grad" in checks
    direct = [imp for imp in imports if imp.source in checks and _is_runtime(imp.target)]
    if direct:
        pytest.fail(
            "a check imports the runtime (checks read a context and return findings):\n"
            + "\n".join(f"  {imp.source} imports {imp.target}    ({imp.where})" for imp in direct),
            pytrace=False,
        )
    chains = [chain for chain in (_chain_to_runtime(c, imports) for c in checks) if chain]
    if chains:
        pytest.fail(
            "a check reaches the runtime through what it imports:\n" + "\n\n".join(describe(c) for c in chains),
            pytrace=False,
        )


def test_every_module_has_a_docstring() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in find_modules(ROOT).values()
        if ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) is None
    ]
    if missing:
        pytest.fail("modules without a docstring saying what they hold:\n" + "\n".join(f"  {p}" for p in missing), pytrace=False)


def test_help_version_rules_and_explain_do_not_import_torch() -> None:
    """`lens --help`, `--version`, `rules` and `explain` answer in a fraction of a second: nothing
    they run imports torch (nor does `import autograd_lens`, the rule catalog or the pytest plugin)."""
    import subprocess
    import sys

    program = """
import sys
from click.testing import CliRunner
import autograd_lens, autograd_lens.checks, autograd_lens.pytest_plugin
from cli.main import main
for args in (["--help"], ["--version"], ["rules"], ["explain", "stray-grad"], ["trace", "--help"], ["draw", "--help"]):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
    assert "torch" not in sys.modules, f"lens {' '.join(args)} imported torch"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

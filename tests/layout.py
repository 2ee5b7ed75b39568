"""The shape of the project's code: modules, their import arrows, cycles, the longest functions.

    python tests/layout.py [ROOT] [--package tasks]

prints, for one package (default: tasks): its files and lines, the import arrows among its
modules and the cycles they form, and its ten longest functions. tests/test_imports.py checks
the layering rules with the same graph, so what this prints is what the test sees.

An arrow A -> B is any import of B (or of a name in B) written in A, at the top of the file or
inside a function: a function-level import is a dependency too, only a later one. The graph
used for "at import time" keeps the top-level ones alone (not those under TYPE_CHECKING).
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, package: str) -> dict[str, Path]:
    """module name -> file, for every .py file of `package` under `root`."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    target: str        # the module, or module.name, that the statement names
    names: tuple[str, ...]  # the names taken from it (from X import a, b); () for `import X`
    line: int
    top_level: bool    # runs when the module is imported


def _imports(tree: ast.Module, name: str, is_package: bool) -> list[Import]:
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, (), child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package
                for _ in range(child.level - 1):
                    base = base.rpartition(".")[0]
                if child.level:
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                found.append(Import(base, tuple(a.name for a in child.names), child.lineno, top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                visit(child, False)
            else:
                visit(child, top)
    visit(tree, True)
    return found


def imports_of(path: Path, root: Path) -> list[Import]:
    return _imports(ast.parse(path.read_text()), module_name(path, root), path.name == "__init__.py")


def resolve(imp: Import, known: set[str]) -> set[str]:
    """The modules of `known` an import statement is for: the deepest known module of what it
    names (`from tasks.runs.folder import start_run` -> tasks.runs.folder, `from tasks.runs import
    folder` -> tasks.runs.folder). The packages above them, which Python loads on the way, are
    not arrows of their own (a package's __init__ only counts when nothing deeper is named)."""
    found = set()
    for t in {imp.target} | {f"{imp.target}.{n}" for n in imp.names}:
        parts = t.split(".")
        deepest = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known), None)
        if deepest is not None:
            found.add(deepest)
    return {m for m in found if not any(other.startswith(m + ".") for other in found)}


def graph(root: Path, package: str, top_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (not itself, not the packages that
    contain it, which Python loads first anyway)."""
    mods = modules(root, package)
    known = set(mods)
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imp in imports_of(path, root):
            if top_level_only and not imp.top_level:
                continue
            targets |= {t for t in resolve(imp, known) if not (name == t or name.startswith(t + "."))}
        g[name] = targets
    return g


def arrows(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in g.items() for b in targets)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            connect(v)
    return sorted(found)


@dataclass(frozen=True)
class Function:
    module: str
    name: str          # Class.method for methods, outer.inner for nested functions
    line: int
    length: int        # lines from `def` to the last line of its body


def functions(root: Path, package: str) -> list[Function]:
    """Every function and method of the package, nested ones included, longest first."""
    out: list[Function] = []
    for name, path in modules(root, package).items():
        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append(Function(name, prefix + child.name, child.lineno,
                                        child.end_lineno - child.lineno + 1))
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)
        visit(ast.parse(path.read_text()), "")
    return sorted(out, key=lambda f: (-f.length, f.module, f.name))


def line_counts(root: Path, package: str) -> dict[str, int]:
    return {name: len(path.read_text().splitlines()) for name, path in modules(root, package).items()}


def report(root: Path, package: str) -> str:
    lines_of = line_counts(root, package)
    g = graph(root, package)
    top = graph(root, package, top_level_only=True)
    longest = functions(root, package)[:10]
    out = [f"{package}/ under {root}",
           f"files: {len(lines_of)}, lines: {sum(lines_of.values())}, "
           f"largest: {', '.join(f'{m} {n}' for m, n in sorted(lines_of.items(), key=lambda kv: -kv[1])[:5])}",
           f"import arrows among its modules: {len(arrows(g))} ({len(arrows(top))} at import time)"]
    found = cycles(g)
    out.append(f"cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    out.append("longest functions:")
    out += [f"  {f.length:4d}  {f.module}.{f.name} (line {f.line})" for f in longest]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default=str(ROOT), help="the project's root (default: this checkout)")
    p.add_argument("--package", default="tasks", help="default: %(default)s")
    args = p.parse_args(argv)
    print(report(Path(args.root).resolve(), args.package))
    return 0


if __name__ == "__main__":
    sys.exit(main())

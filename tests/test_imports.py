"""minigrad's modules form no import cycle: each ops module imports tensor.py, and tensor.py
reaches the ops only inside its methods (on first use), never at import time."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "minigrad"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path):
    """The import statements that run when the module is imported: top level, including inside
    top-level if/try blocks, but not under `if TYPE_CHECKING:` and not inside functions."""
    def walk(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    yield from walk(node.body)
                    yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    yield from walk(part)
    yield from walk(ast.parse(path.read_text()).body)


def import_graph() -> dict[str, set[str]]:
    """minigrad module -> the minigrad modules its import runs, parent packages included (but not
    the packages that contain the importer, which are always loaded first)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _top_level_imports(path):
            if isinstance(node, ast.Import):
                bases = [a.name for a in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                bases = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in bases:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in files and not (name == prefix or name.startswith(prefix + ".")):
                        targets.add(prefix)
        graph[name] = targets
    return graph


def test_minigrad_imports_form_no_cycle():
    graph = import_graph()
    assert "minigrad.ops.elementwise" in graph and "minigrad.tensor" in graph["minigrad.ops.elementwise"]
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_attaches_methods_to_tensor():
    """Tensor's operators and methods are declared in its class body, not assigned from outside."""
    offenders = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "Tensor":
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} Tensor.{t.attr}")
    assert not offenders, offenders


def test_each_module_imports_first_in_a_fresh_interpreter():
    """Every minigrad module can be the first one imported (a cycle would leave a name undefined)."""
    modules = sorted(m for m in import_graph() if m != "minigrad.kernels.__main__")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    for k in [k for k in sys.modules if k == 'minigrad' or k.startswith('minigrad.')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


_SPY = """
import ctypes, json
calls = []
class SpyCDLL(ctypes.CDLL):  # records every libc function looked up, mallopt included
    def __getattr__(self, name):
        calls.append(name)
        return super().__getattr__(name)
    def __getitem__(self, name):
        calls.append(name)
        return super().__getitem__(name)
ctypes.CDLL = SpyCDLL
from numpy._core.multiarray import _get_madvise_hugepage
before = _get_madvise_hugepage()
import minigrad, minigrad.functional, minigrad.nn, minigrad.optim, minigrad.io, minigrad.amp
imported = {"mallopt": "mallopt" in calls, "hugepage_changed": _get_madvise_hugepage() != before}
minigrad.backend.tune_allocator()
tuned = {"mallopt": "mallopt" in calls, "hugepage": _get_madvise_hugepage()}
print(json.dumps({"imported": imported, "tuned": tuned}))
"""


def test_importing_minigrad_leaves_the_allocator_alone():
    """Allocator tuning changes the whole process: only an explicit tune_allocator() does it."""
    import json
    import os
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    r = subprocess.run([sys.executable, "-c", _SPY], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["imported"] == {"mallopt": False, "hugepage_changed": False}
    if sys.platform.startswith("linux"):
        assert seen["tuned"] == {"mallopt": True, "hugepage": False}

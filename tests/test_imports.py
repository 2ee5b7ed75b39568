"""The project's layering, checked on its source (the same graph tests/layout.py prints):

    tasks/     commands (flat: tasks/pretrain.py, ...) over wings: common <- data, runs <-
               training, evals, serving; nothing imports a command
    gpt2/      imports nothing of tasks
    minigrad/  imports nothing of the project, and its modules form no import cycle (each ops
               module imports tensor.py; tensor.py reaches the ops only inside its methods)

and the rules that keep tasks/ readable: no cycle, no private name imported across modules,
no library function taking an argparse Namespace (commands parse their flags into typed values
once; see tasks/common/args.py). Modules of tasks/, gpt2/ and files/ stay under ~400 lines and
their functions under ~50."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import layout

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "minigrad"
PROJECT = ("minigrad", "gpt2", "tasks", "files", "bench", "tests")


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
    _import_each_first("minigrad", sorted(m for m in import_graph() if m != "minigrad.kernels.__main__"))


def _import_each_first(package: str, modules: list[str], timeout: float = 300) -> None:
    """Import each module in a fresh interpreter with none of `package` loaded before it."""
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            f"    for k in [k for k in sys.modules if k == {package!r} or k.startswith({package + '.'!r})]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
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


# ----------------------------------------------------------------------------- the layers

def _imports_of_package(package: str, root: Path = ROOT):
    """(module, line, top-level package it imports from) for every import in `package`."""
    for name, path in layout.modules(root, package).items():
        for imp in layout.imports_of(path, root):
            yield name, imp.line, imp.target.split(".")[0]


def test_minigrad_imports_nothing_of_the_project():
    found = [f"{m}:{line} imports {top}" for m, line, top in _imports_of_package("minigrad")
             if top in PROJECT and top != "minigrad"]
    assert not found, found


def test_gpt2_and_files_import_nothing_of_tasks():
    found = [f"{m}:{line} imports {top}" for pkg in ("gpt2", "files") for m, line, top in _imports_of_package(pkg)
             if top in ("tasks", "bench", "tests")]
    found += [f"{m}:{line} imports {top}" for m, line, top in _imports_of_package("files") if top == "gpt2"]
    assert not found, found


# ----------------------------------------------------------------------------- tasks: commands and wings

COMMANDS = {"prepare", "pretrain", "classify", "instruct", "evaluate", "generate", "serve"}
# a wing may import its own modules and those of lower levels only
LEVELS = {"common": 0, "data": 1, "runs": 1, "training": 2, "evals": 2, "serving": 2}
COMMAND_LEVEL = 3


def _part_of(module: str) -> str | None:
    """The wing of a tasks module ("common", ...), "command" for a command, None for tasks/__init__."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if len(parts) == 2 and parts[1] in COMMANDS:
        return "command"
    return parts[1] if parts[1] in LEVELS else f"unknown ({parts[1]})"


def tasks_layout_problems(root: Path = ROOT) -> list[str]:
    """Every way tasks/ under `root` breaks the layering (a function of the tree, so that it can be
    shown failing on an older one: `python -c "import test_imports as t; print(t.tasks_layout_problems(P))"`)."""
    problems = []
    mods = layout.modules(root, "tasks")
    flat = {m.split(".")[1] for m in mods if m.count(".") == 1 and not (root / "tasks" / m.split(".")[1]).is_dir()}
    problems += [f"tasks/{m}.py is flat but not a command: shared code belongs in a wing"
                 for m in sorted(flat - COMMANDS)]
    problems += [f"tasks/{m}.py, a command, is missing" for m in sorted(COMMANDS - flat)]
    problems += [f"{m}: not in a known wing" for m in mods if (_part_of(m) or "").startswith("unknown")]
    graph = layout.graph(root, "tasks")
    for a, b in layout.arrows(graph):
        wa, wb = _part_of(a), _part_of(b)
        if wb == "command":
            problems.append(f"{a} imports the command {b}")
        elif wa is not None and wb is not None and wa != wb and wa != "command" and not (
                wa in LEVELS and wb in LEVELS and LEVELS[wa] > LEVELS[wb]):
            problems.append(f"{a} imports {b}: the {wa} wing may not import the {wb} wing")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in layout.cycles(graph)]
    return problems


def test_tasks_commands_are_flat_and_wings_import_only_downward():
    assert tasks_layout_problems() == []


def test_tasks_layout_check_sees_what_it_should(tmp_path):
    """The check above fails on a tree that breaks each rule (a wing importing upward, a library
    module importing a command, a cycle, a flat module that is no command)."""
    tree = {"tasks/__init__.py": "", "tasks/pretrain.py": "", "tasks/helpers.py": "",
            "tasks/common/__init__.py": "", "tasks/common/a.py": "from tasks.runs import b\n",
            "tasks/runs/__init__.py": "", "tasks/runs/b.py": "from tasks.common import a\nfrom tasks import pretrain\n"}
    for path, text in tree.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    found = "\n".join(tasks_layout_problems(tmp_path))
    for expected in ("tasks/helpers.py is flat but not a command", "tasks.runs.b imports the command tasks.pretrain",
                     "the common wing may not import the runs wing", "import cycle: tasks.common.a <-> tasks.runs.b",
                     "tasks/evaluate.py, a command, is missing"):
        assert expected in found, found


def test_every_tasks_module_imports_first_in_a_fresh_interpreter():
    """No cycle at import time either: each tasks module can be the first one imported."""
    modules = sorted(layout.modules(ROOT, "tasks"))
    if not _has("starlette"):
        modules.remove("tasks.serving.app")
    _import_each_first("tasks", modules)


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_no_private_name_is_imported_across_modules():
    """tasks/, gpt2/ and files/ import no `_name` from another module of the project, nor do
    tests/ and bench/ from tasks/."""
    found = []
    for package in ("tasks", "gpt2", "files", "tests", "bench"):
        for name, path in layout.modules(ROOT, package).items():
            for imp in layout.imports_of(path, ROOT):
                top = imp.target.split(".")[0]
                if top not in PROJECT or (package in ("tests", "bench") and top != "tasks"):
                    continue
                private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
                if private:
                    found.append(f"{name}:{imp.line} imports {', '.join(private)} from {imp.target}")
    assert not found, found


# ----------------------------------------------------------------------------- size, and tasks' edge

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 50
# the packages held to those limits (the guide's style rule)
SMALL_PACKAGES = ("tasks", "gpt2", "files", "minigrad")


@pytest.mark.parametrize("package", SMALL_PACKAGES)
def test_modules_and_functions_stay_small(package):
    big = [f"{m}: {n} lines" for m, n in layout.line_counts(ROOT, package).items() if n > MAX_MODULE_LINES]
    long = [f"{f.module}.{f.name}: {f.length} lines" for f in layout.functions(ROOT, package)
            if f.length > MAX_FUNCTION_LINES]
    assert not big and not long, big + long


def _namespace_parameters(tree: ast.Module) -> list[str]:
    """Functions with a parameter annotated as an argparse Namespace or named `args`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs:
                note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg == "args" or "Namespace" in note:
                    found.append(f"{node.name}({arg.arg}{': ' + note if note else ''}) at line {node.lineno}")
    return found


def test_no_library_function_takes_an_argparse_namespace():
    """Commands turn their flags into typed values once (ModelSpec, TrainConfig, RunSpec, plain
    arguments); below them nothing takes a Namespace, and only common/args.py imports argparse."""
    found = []
    for name, path in layout.modules(ROOT, "tasks").items():
        if _part_of(name) in ("command", None):
            continue
        tree = ast.parse(path.read_text())
        found += [f"{name}: {f}" for f in _namespace_parameters(tree)]
        if name != "tasks.common.args" and any(imp.target == "argparse" for imp in layout.imports_of(path, ROOT)):
            found.append(f"{name} imports argparse")
    assert not found, found


def test_the_namespace_check_sees_one():
    tree = ast.parse("import argparse\ndef f(x, args): ...\ndef g(ns: argparse.Namespace): ...\n")
    assert len(_namespace_parameters(tree)) == 2


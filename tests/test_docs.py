"""Every fenced block of README.md and docs/*.md, run as a reader would run it.

The reader's order: README.md first, then each guide in the order of README.md's "Links". Every
shell command and Python snippet runs in ONE folder, a copy of the repository (its tracked files)
with the data cache filled from $MINIGRAD_DATA_DIR or the repository's data/ (offline, as CI has
it), so commands that would collide for a reader (two runs into one --out, a server on a busy
port) collide here too. Shell blocks run line by line with bash; Python blocks each in a fresh
interpreter; `python -m tasks.serve` starts in the background (a reader's second terminal), its
port replaced by a free one here and in every later block, and is stopped at the end.

A block's language tag says what it is: bash/sh/shell (run), python (run), text (read only). A
fence without one fails `test_every_block_says_what_it_is`. HTML comments right above a block
change how it is run here, visibly to a reader of the markdown source:

    <!-- doc-test: skip: REASON -->              not run (a GPU, a download of official weights, ...)
    <!-- doc-test: ci: REASON -->                not run here: CI's own steps (each command, bar
                                                 installs, must appear in .ci/run)
    <!-- doc-test: needs `PROGRAM`: REASON -->   skipped when PROGRAM is not on PATH
    <!-- doc-test: shrink `PREFIX` with `FLAGS`: WHAT THE FULL SIZE DOES -->
                                                 FLAGS appended to each command starting with PREFIX
                                                 (argparse: the last value of a flag wins)
    <!-- doc-test: instead `COMMAND`: REASON -->  COMMAND runs in the block's place, so that what
                                                 later blocks need exists
    <!-- doc-test: status N,M: REASON -->         these exit statuses count as success

Every `pip install -e '.[EXTRAS]'` must name extras that setup.cfg defines. The run prints how
many blocks ran and how many were skipped, with the reasons (conftest's terminal summary).
"""
from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import DOCS_SUMMARY

ROOT = Path(__file__).resolve().parents[1]
SHELL, PYTHON, TEXT = ("bash", "sh", "shell"), ("python",), ("text",)
COMMAND_TIMEOUT_S = 600
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(.*)$")


# ---------------------------------------------------------------- reading the docs
@dataclass
class Block:
    doc: str                      # path relative to the repository
    line: int                     # of the opening fence
    lang: str
    code: str
    markers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


def docs_in_reading_order() -> list[Path]:
    """README.md, then docs/*.md in the order of README.md's "Links" section (its reading order)."""
    readme = (ROOT / "README.md").read_text()
    links = readme.split("\n## Links\n", 1)[-1]
    order = []
    for m in re.finditer(r"\]\((docs/[\w.-]+\.md)", links):
        if m.group(1) not in order:
            order.append(m.group(1))
    return [ROOT / "README.md", *[ROOT / p for p in order]]


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.group(1), m.group(2).strip()
        markers, j = [], i - 1
        while j >= 0 and MARKER.match(lines[j]):
            markers.insert(0, MARKER.match(lines[j]).group(1))
            j -= 1
        body, i = [], i + 1
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        blocks.append(Block(str(path.relative_to(ROOT)), i - len(body), info.split()[0] if info else "",
                            "\n".join(body) + "\n", markers))
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in docs_in_reading_order() for b in read_blocks(path)]


def commands(code: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, blank and comment lines dropped."""
    out, current = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def split_comment(command: str) -> tuple[str, str]:
    """(the command, its trailing `# comment`), a `#` inside quotes not counting."""
    quote = None
    for i, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip(), command[i:]
    return command, ""


@dataclass
class Plan:
    """How one block runs here, from its markers."""
    skip: str | None = None
    ci: bool = False
    needs: list[str] = field(default_factory=list)
    shrink: list[tuple[str, str]] = field(default_factory=list)
    instead: str | None = None
    statuses: tuple[int, ...] = (0,)


def plan_of(block: Block) -> Plan:
    plan = Plan()
    for m in block.markers:
        if g := re.fullmatch(r"skip:\s*(.+)", m):
            plan.skip = g.group(1)
        elif g := re.fullmatch(r"ci:\s*(.+)", m):
            plan.skip, plan.ci = "CI runs it as its own step: " + g.group(1), True
        elif g := re.fullmatch(r"needs `([^`]+)`(?::\s*(.+))?", m):
            plan.needs.append(g.group(1))
        elif g := re.fullmatch(r"shrink `([^`]+)` with `([^`]+)`(?::\s*(.+))?", m):
            plan.shrink.append((g.group(1), g.group(2)))
        elif g := re.fullmatch(r"instead `([^`]+)`:\s*(.+)", m):
            plan.instead, plan.skip = g.group(1), g.group(2)
        elif g := re.fullmatch(r"status ([\d,]+):\s*(.+)", m):
            plan.statuses = tuple(int(s) for s in g.group(1).split(","))
        else:
            raise ValueError(f"{block.name}: unknown doc-test marker {m!r}")
    return plan


BLOCKS = all_blocks()
RUNNABLE = [b for b in BLOCKS if b.lang in SHELL + PYTHON]


# ---------------------------------------------------------------- static checks
def test_every_block_says_what_it_is():
    """A fence without a language (or with one we do not know) would slip through unrun."""
    bad = [f"{b.name}: {b.lang or 'no language'}" for b in BLOCKS if b.lang not in SHELL + PYTHON + TEXT]
    assert not bad, "fenced blocks must be bash, python or text: " + "; ".join(bad)
    for b in BLOCKS:
        plan_of(b)  # every marker parses
        if b.markers and b.lang in TEXT:
            raise AssertionError(f"{b.name}: a text block is never run, so doc-test markers mean nothing there")


def test_every_guide_is_linked_from_the_readme():
    linked = {p.name for p in docs_in_reading_order()[1:]}
    unlinked = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in linked)
    assert not unlinked, f"README.md links no docs/{unlinked}: a reader would not find them (nor this test run them)"


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_quick_start_says_time_memory_and_disk():
    """The main job's cost where a CPU user looks first, each figure one that docs/benchmarks.md
    gives with what measured it (rounded at most 5%)."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for word in ("minutes", "of memory", "of disk", "--resume"):
        assert word in quick, f"README's quick start does not say {word!r}"
    bench = (ROOT / "docs" / "benchmarks.md").read_text().split("## The main job", 1)[1].split("\n## ", 1)[0]
    measured = [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+) GB", bench)]
    figures = [float(x) for x in re.findall(r"(\d+(?:\.\d+)?) GB", quick)]
    assert len(figures) >= 3, f"README's quick start gives {figures} GB: memory, on --resume, disk"
    for x in figures:
        assert any(abs(x - y) <= 0.05 * y for y in measured), (
            f"README's quick start says {x} GB, which docs/benchmarks.md's main job ({measured}) does not")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_resolve():
    """Every relative link of the docs names a file that exists, and a #heading that it has."""
    bad = []
    for doc in docs_in_reading_order():
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                bad.append(f"{doc.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in {
                    slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}:
                bad.append(f"{doc.name}: {target} (no such heading)")
    assert not bad, "; ".join(bad)


def test_pip_installs_name_real_extras():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    for b in BLOCKS:
        for extra_list in re.findall(r"pip install[^\n]*?-e '?\.\[([\w,-]+)\]", b.code):
            unknown = set(extra_list.split(",")) - extras
            assert not unknown, f"{b.name}: pip install names extras setup.cfg lacks: {sorted(unknown)}"


def test_the_test_extra_runs_the_serve_tests():
    """The quick start's `pip install -e '.[test]'` is enough for the serve tests and the docs' serve
    commands (a new user's first run skipped them for want of Starlette and uvicorn)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {k: set(v.split()) for k, v in cfg["options.extras_require"].items()}
    assert extras["serve"] <= extras["test"], f"the test extra lacks {sorted(extras['serve'] - extras['test'])}"


def test_ci_blocks_are_ci_steps():
    """A block marked `ci` says CI runs it: each command but the installs must be in .ci/run."""
    ci = (ROOT / ".ci" / "run").read_text()
    for b in BLOCKS:
        if not plan_of(b).ci:
            continue
        for cmd in commands(b.code):
            code, _ = split_comment(cmd)
            if re.match(r"(pip install|python -m venv)", code):
                continue
            assert code in ci, f"{b.name}: {code!r} is marked as a CI step but .ci/run does not run it"


# ---------------------------------------------------------------- every command's module and flags
PROJECT = ("tasks", "bench", "minigrad", "gpt2", "files")
REDIRECT = re.compile(r"\s(?:\d?>>?|&>|<)\s*(?:&\d|[^\s&|;]+)")  # `2> time.txt`, `> out`, `2>&1`
PARSE_ONLY = r"""
import argparse, io, json, runpy, sys
class Parsed(BaseException):
    pass
plain = argparse.ArgumentParser.parse_args
def parse_args(self, *a, **k):
    raise Parsed(plain(self, *a, **k))  # the flags are accepted: stop before the command does any work
argparse.ArgumentParser.parse_args = parse_args
results = []
for module, argv in json.load(sys.stdin):
    sys.argv, err, sys.stderr = [module, *argv], sys.stderr, io.StringIO()
    run = None
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        verdict = "it never called parse_args"
    except Parsed as p:
        verdict, ns = None, vars(p.args[0])
        run = {"init": ns.get("init") if isinstance(ns.get("init"), str) else None}
        if isinstance(ns.get("out"), str) and ns.get("command", "train") == "train":
            run.update(out=ns["out"], resume=bool(ns.get("resume")))  # a training run's folder
    except SystemExit as e:  # --help exits 0 after printing; a refused flag exits 2
        verdict = None if e.code in (0, None) else f"exit {e.code}: {sys.stderr.getvalue().strip()[-500:]}"
    except BaseException as e:
        verdict = f"{type(e).__name__}: {e}"
    sys.stderr = err
    results.append([verdict, run])
print(json.dumps(results))
"""


def python_invocations(command: str) -> list[tuple[str, list[str]]]:
    """Each `python -m MODULE ARGS` of a shell command line (after pipes, `&&`, env assignments,
    `mpiexec -n N`, `/usr/bin/time -v`), its redirections dropped: (MODULE, ARGS)."""
    code, _ = split_comment(command)
    code = REDIRECT.sub(" ", code)
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts, words = [], []
    for token in lexer:
        if token in ("|", "||", "&&", ";", "&"):
            parts.append(words)
            words = []
        else:
            words.append(token)
    found = []
    for words in [*parts, words]:
        for i in range(len(words) - 2):
            if words[i] == "python" and words[i + 1] == "-m":
                found.append((words[i + 2], words[i + 3:]))
                break
    return found


def shrunk(block: Block, command: str) -> str | None:
    code, _ = split_comment(command)
    for prefix, flags in plan_of(block).shrink:
        if re.sub(r"^(\w+=\S+ )*", "", code).startswith(prefix):
            return f"{code} {flags}"
    return None


@dataclass
class Invocation:
    name: str                     # the block and the command as the docs write it
    shrunk: bool                  # not as a reader runs it: with a `shrink` marker's flags, or `instead`
    offline: bool                 # it runs offline without a GPU (test_block runs it): not in a skipped block
    verdict: str | None           # why it would not start; None: it would
    init: str | None = None       # its --init
    run: tuple[str, bool] | None = None  # a training command's (--out, --resume)


@functools.lru_cache(maxsize=1)
def parsed_invocations() -> tuple[list[Invocation], list[str]]:
    """Every `python -m` of the docs, skipped blocks and `instead` commands included (a GPU run, a
    download), through its own parser in one child interpreter; and the commands naming a module
    or script that does not exist."""
    from importlib.util import find_spec
    cases, found, bad = [], [], []
    for b in BLOCKS:
        if b.lang not in SHELL:
            continue
        instead = [plan_of(b).instead] if plan_of(b).instead else []
        for cmd in commands(b.code) + instead:
            for variant, is_shrunk in ((cmd, cmd in instead), (shrunk(b, cmd), True)):
                for module, argv in python_invocations(variant or ""):
                    name = f"{b.name}: `{split_comment(variant)[0]}`"
                    top = module.split(".")[0]
                    if find_spec(top if top not in PROJECT else module) is None:
                        bad.append(f"{name}: no module {module}")
                    elif top in PROJECT:
                        cases.append((module, argv))
                        offline = plan_of(b).skip is None or cmd in instead
                        found.append(Invocation(name, is_shrunk, offline, None))
            for path in re.findall(r"\bbash (\S+\.sh)\b", cmd):
                if not (ROOT / path).is_file():
                    bad.append(f"{b.name}: `{cmd}`: no file {path}")
    r = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=json.dumps(cases), cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "MINIGRAD_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    for inv, (verdict, parsed) in zip(found, json.loads(r.stdout.strip().splitlines()[-1])):
        inv.verdict = verdict
        if parsed:
            inv.init = parsed["init"]
            inv.run = (parsed["out"], parsed["resume"]) if "out" in parsed else None
    return found, bad


def test_every_command_parses():
    """Each command's module exists and its parser accepts the flags as written, and with the flags
    a `shrink` marker adds. The parser alone runs (it is stopped as it returns), so nothing is
    trained or downloaded; a run of the blocks themselves is test_block's."""
    found, bad = parsed_invocations()
    assert len(found) > 20, f"the docs name {len(found)} commands of the project: fewer than they do"
    bad = bad + [f"{inv.name}: {inv.verdict}" for inv in found if inv.verdict]
    assert not bad, "commands of the docs that would not start:\n" + "\n".join(bad)


def test_no_two_runs_share_a_folder():
    """Two training commands of the docs without --resume into one --out (the default's included):
    a reader running both gets "already holds a run" at the second. test_block catches that among
    the blocks it runs; this catches it among all, GPU and download blocks too."""
    found, _ = parsed_invocations()
    seen: dict[str, str] = {}
    clashes = []
    for inv in found:
        if inv.shrunk or not inv.run or inv.run[1]:
            continue
        out = os.path.normpath(inv.run[0])
        if out in seen:
            clashes.append(f"{inv.name} writes {out}, as {seen[out]} does")
        seen.setdefault(out, inv.name)
    assert not clashes, "; ".join(clashes)
    assert "runs/pretrain" in seen, "the main job's run folder is not among them: the check sees nothing"


def test_every_init_names_a_run_the_docs_made():
    """`--init runs/X` names a run folder that an earlier training command of the docs (in the
    reader's order) writes, and one a reader offline and without a GPU ran, if this command is one
    such a reader runs: the new user's `classify predict --init runs/classify` followed a training
    command that wrote runs/spam-small (runs/classify is what the official weights' block makes)."""
    found, _ = parsed_invocations()
    made, made_offline, wrong, checked = set(), set(), [], 0
    for inv in found:
        if inv.init and inv.init.startswith("runs/") and not (inv.shrunk and not inv.offline):
            checked += 1
            init = os.path.normpath(inv.init)
            if init not in (made_offline if inv.offline else made):
                wrong.append(f"{inv.name}: no command {'run offline ' if inv.offline else ''}before it writes {init}")
        if inv.run and not (inv.shrunk and not inv.offline):
            made.add(os.path.normpath(inv.run[0]))
            if inv.offline:
                made_offline.add(os.path.normpath(inv.run[0]))
    assert checked, "no command of the docs reads a run folder: the check sees nothing"
    assert not wrong, "; ".join(wrong)


def test_clients_ask_the_server_for_its_model():
    """A model id written into a client snippet 404s against a server of another model (the new
    user's `model="gpt2-124M"` against a run folder's server): the snippets ask /v1/models."""
    clients = [b for b in BLOCKS if b.lang in PYTHON and "OpenAI(" in b.code]
    assert clients, "no snippet of the docs uses the openai client: the check sees nothing"
    for b in clients:
        assert not re.search(r"model\s*=\s*['\"]", b.code), f"{b.name}: a model id written in"
        assert "models.list()" in b.code, f"{b.name}: the model id should come from client.models.list()"


# ---------------------------------------------------------------- the reader's folder
class Reader:
    """The one folder every block runs in, its environment, and the servers it started."""

    def __init__(self, base: Path):
        self.folder = base / "minigrad-gpt2"
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)
        copy_repository(self.folder)
        link_cache(self.folder / "data")
        bin_dir = base / "bin"
        bin_dir.mkdir()
        # `python` is this interpreter (a wrapper, not a link: a venv's python finds its venv by its path)
        (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (bin_dir / "python").chmod(0o755)
        env = {k: v for k, v in os.environ.items()
               if k not in ("MINIGRAD_DATA_DIR", "MINIGRAD_TRACEBACK", "MINIGRAD_TEST_PAUSE_AT")}
        env.update(PYTHONPATH=str(self.folder), MINIGRAD_OFFLINE="1", PYTHONUNBUFFERED="1",
                   PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]))
        self.env = env
        self.ports: dict[int, int] = {}
        self.servers: list[tuple[subprocess.Popen, str]] = []
        self.ran = self.commands = self.snippets = 0
        self.skipped: dict[str, int] = {}
        self.substituted: list[str] = []

    def port(self, doc_port: int) -> int:
        if doc_port not in self.ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.ports[doc_port] = s.getsockname()[1]
        return self.ports[doc_port]

    def localize(self, text: str) -> str:
        """The docs' ports (8000, ...) replaced by the free ones their servers got here."""
        for doc_port, port in self.ports.items():
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{doc_port}\b", rf"\g<1>:{port}", text)
        return text

    def run_shell(self, cmd: str, block: Block, statuses=(0,)) -> None:
        code, _ = split_comment(cmd)
        if re.match(r"(\w+=\S+ )*python -m tasks\.serve\b", code) or code.endswith("&"):
            return self.start_server(code.rstrip("&").strip(), block)
        self.commands += 1
        r = subprocess.run(["bash", "-c", "set -o pipefail; " + self.localize(code)], cwd=self.folder,
                           env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
        assert r.returncode in statuses, (
            f"{block.name}: `{code}` exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")

    def start_server(self, code: str, block: Block) -> None:
        m = re.search(r"--port (\d+)", code)
        doc_port = int(m.group(1)) if m else 8000
        port = self.port(doc_port)
        code = re.sub(r"--port \d+", f"--port {port}", code) if m else f"{code} --port {port}"
        log = open(self.logs / f"server-{doc_port}.log", "w")
        proc = subprocess.Popen(["bash", "-c", "exec " + code], cwd=self.folder, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.servers.append((proc, log.name))
        self.commands += 1
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{block.name}: `{code}` exited {proc.returncode}:\n"
                                     + Path(log.name).read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    json.load(r)
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{block.name}: `{code}` did not answer /health in 300 s")

    def run_python(self, block: Block) -> None:
        path = self.logs / f"{block.doc.replace('/', '_')}_{block.line}.py"
        path.write_text(self.localize(block.code))
        self.snippets += 1
        r = subprocess.run([sys.executable, str(path)], cwd=self.folder, env=self.env, capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{block.name} (Python) exited {r.returncode}:\n{r.stderr[-3000:]}"

    def stop(self) -> None:
        for proc, _ in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def summary(self) -> list[str]:
        skipped = sum(self.skipped.values())
        lines = [f"docs: {self.ran} blocks of README.md and docs/ ran ({self.commands} shell commands, "
                 f"{self.snippets} Python snippets), {skipped} skipped, in one folder"]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.items()]
        lines += [f"  run in place of another: {s}" for s in self.substituted]
        return lines


def copy_repository(dest: Path) -> None:
    """The repository's tracked (and new, not ignored) files: what a fresh clone holds."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".git", "data", "runs", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def link_cache(dest: Path) -> None:
    """data/ as the environment's cache holds it (every file a symbolic link: nothing is copied, and
    a command that replaces a file replaces the link), less the shards earlier runs made."""
    source = Path(os.environ.get("MINIGRAD_DATA_DIR") or ROOT / "data")
    for src in source.rglob("*"):
        rel = src.relative_to(source)
        if rel.parts[0] == "shards" or not src.is_file() or (dest / rel).exists():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).symlink_to(src.resolve())


def missing_from_cache() -> list[str]:
    """What the docs' offline commands read from the data cache and it does not hold."""
    from files.hub import cache_dir
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer
    from tasks.data.manifest import DATASETS
    names = ("the-verdict", "tinyshakespeare", "sms-spam", "instruction-data", "mmlu")
    missing = [DATASETS[n].relpath for n in names if not (cache_dir() / DATASETS[n].relpath).is_file()]
    try:
        get_tokenizer()
    except TokenizerUnavailableError:
        missing.append("GPT-2's tokenizer files (gpt2/encoder.json, gpt2/vocab.bpe)")
    return missing


@pytest.fixture(scope="module")
def reader(tmp_path_factory, request):
    if request.config.getoption("--backend") == "standin":
        pytest.skip("the docs' commands run on NumPy as a reader runs them; the stand-in run adds nothing")
    if missing := missing_from_cache():
        pytest.skip(f"the docs' commands need these files in the data cache (offline): {', '.join(missing)}")
    r = Reader(tmp_path_factory.mktemp("docs"))
    yield r
    r.stop()
    request.config.stash.setdefault(DOCS_SUMMARY, []).extend(r.summary())


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_block(block: Block, reader: Reader):
    plan = plan_of(block)
    missing = [p for p in plan.needs if shutil.which(p, path=reader.env["PATH"]) is None]
    if missing:
        plan.skip = f"{', '.join(missing)} not installed"
    if plan.instead:
        reader.run_shell(plan.instead, block)
        reader.substituted.append(f"{block.name}: `{plan.instead}` ({plan.skip})")
    if plan.skip:
        reader.skipped[plan.skip] = reader.skipped.get(plan.skip, 0) + 1
        pytest.skip(f"{block.name}: {plan.skip}")
    if block.lang in PYTHON:
        reader.run_python(block)
    else:
        for cmd in commands(block.code):
            code, comment = split_comment(cmd)
            for prefix, flags in plan.shrink:
                if re.sub(r"^(\w+=\S+ )*", "", code).startswith(prefix):
                    code = f"{code} {flags}"
            reader.run_shell(code, block, plan.statuses)
    reader.ran += 1

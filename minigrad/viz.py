"""See the graph: the computation graph behind a tensor, as Graphviz DOT text.

    from minigrad import viz
    text = viz.to_dot(loss, names=model.named_parameters())   # DOT: needs nothing installed
    svg = viz.render(loss, "svg", names=model.named_parameters())  # needs Graphviz's `dot`

Two kinds of node. An op (an ellipse) is one Function applied: its name is the Function's
(LinearFn, GeluFn, ...), exactly what backward() will call. A tensor (a box) shows its name when
`names` gives one, its shape and dtype, and where it stands with gradients: "requires grad"
(a leaf backward() will fill, blue), "has .grad" once its .grad holds one, "constant" (no gradient
flows to it, grey). Edges follow the forward pass: tensor -> op -> result, so backward() walks
them in reverse. The graph is the one Function.apply recorded, so only what needs a gradient
is in it (build it with grad mode on and some input requiring grad), and backward() frees it:
draw before backward(), or call backward(retain_graph=True).
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Iterable, Mapping

from .tensor import Tensor

Names = Iterable[tuple[str, Tensor]] | Mapping[str, Tensor] | None


class GraphvizMissing(RuntimeError):
    """render() needs Graphviz's `dot` program, and it is not on PATH."""


INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew install graphviz`), "
                "or paste the text of viz.to_dot() into any Graphviz viewer")

_FILL = {"requires grad": "lightblue", "has .grad": "lightblue", "constant": "lightgrey", "": "white"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_label(t: Tensor, name: str | None) -> tuple[str, str]:
    """(label, fill colour) of a tensor's box."""
    if t._ctx is None:  # a leaf: an input, a parameter or a constant
        status = ("has .grad" if t.grad is not None else "requires grad") if t.requires_grad else "constant"
    else:  # an op's result: its gradient is passed on, not kept
        status = ""
    lines = [name] if name else []
    lines.append(f"{tuple(t.shape)} {t.dtype}")
    if status:
        lines.append(status)
    return "\n".join(lines), _FILL[status]


def _walk(root: Tensor) -> tuple[list[Tensor], list]:
    """Tensors and contexts reachable from root, in a fixed order (root first), without recursion."""
    tensors: list[Tensor] = []
    contexts: list = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        tensors.append(t)
        ctx = t._ctx
        if ctx is not None:
            if ctx.fn is None:
                raise RuntimeError("viz: this graph was freed by backward(); draw it before backward(), "
                                   "or call backward(retain_graph=True)")
            contexts.append((t, ctx))
            stack.extend(reversed(ctx.parents))
    return tensors, contexts


def to_dot(root: Tensor, names: Names = None, rankdir: str = "TB") -> str:
    """The graph that produced `root`, as the text of a Graphviz digraph.

    names: (name, tensor) pairs, or a dict name -> tensor, to label tensors with, e.g.
        model.named_parameters().
    rankdir: "TB" (inputs at the top) or "LR" (inputs on the left), as Graphviz reads it.
    """
    if not isinstance(root, Tensor):
        raise TypeError(f"to_dot: root must be a Tensor, got {type(root).__name__}")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"to_dot: rankdir={rankdir!r} is not one of 'TB', 'LR', 'BT', 'RL'")
    pairs = names.items() if isinstance(names, Mapping) else (names or ())
    label_of = {id(t): n for n, t in pairs}
    tensors, contexts = _walk(root)
    node = {id(t): f"t{i}" for i, t in enumerate(tensors)}  # numbered in walk order: the same text each run
    lines = ["digraph minigrad {", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10]; edge [arrowsize=0.6];']
    for t in tensors:
        label, fill = _tensor_label(t, label_of.get(id(t)))
        width = ", penwidth=2" if t is root else ""
        lines.append(f'  {node[id(t)]} [shape=box, style="rounded,filled", fillcolor={fill}{width}, '
                     f"label={_quote(label)}];")
    for i, (out, ctx) in enumerate(contexts):
        op = f"op{i}"
        lines.append(f'  {op} [shape=ellipse, style=filled, fillcolor=lightyellow, label={_quote(ctx.fn.__name__)}];')
        for parent in ctx.parents:
            lines.append(f"  {node[id(parent)]} -> {op};")
        lines.append(f"  {op} -> {node[id(out)]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(root: Tensor | str, fmt: str = "svg", names: Names = None, rankdir: str = "TB") -> bytes:
    """The graph drawn by Graphviz's `dot` program, as the bytes of an "svg", "png" or "pdf" file.

    root: a tensor (drawn with to_dot) or DOT text. Raises GraphvizMissing, saying how to install
    Graphviz, when `dot` is not on PATH.
    """
    if fmt not in ("svg", "png", "pdf"):
        raise ValueError(f"render: fmt={fmt!r} is not one of 'svg', 'png', 'pdf'")
    text = root if isinstance(root, str) else to_dot(root, names, rankdir)
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(f"render: drawing the graph needs Graphviz's `dot` program, which is not on PATH: "
                              f"{INSTALL_HINT}")
    done = subprocess.run([dot, f"-T{fmt}"], input=text.encode(), capture_output=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"render: dot failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout

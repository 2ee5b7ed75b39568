"""minigrad.viz draws the graph behind a tensor (issue 19, item 7): a two-layer MLP's loss and one
GPT-2 block's forward. The DOT text is checked everywhere; the rendered SVG where Graphviz's `dot`
is on PATH (CI installs it); without it, render() says how to install it. The code blocks of
minigrad/README.md (which made the committed pictures) run here too, and the pictures hold the ops
the README says they do.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from gpt2.config import GPT2Config
from gpt2.model import Block
from minigrad import nn, viz

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's `dot` is not on PATH (apt-get install graphviz)")

MLP_OPS = Counter({"LinearFn": 2, "ReluFn": 1, "CrossEntropyFn": 1})
# On NumPy (the composite ops): LayerNorm, the qkv projection and its bias, the split (reshape,
# permute, three indexings), attention, heads back together (transpose = permute, reshape), the
# output projection with its bias and the residual (bias_residual: two adds); LayerNorm, the MLP
# (c_fc, its bias, GELU; c_proj, its bias and the residual)
BLOCK_OPS = Counter({"LayerNormFn": 2, "LinearFn": 4, "ReshapeFn": 2, "PermuteFn": 2, "GetItemFn": 3,
                     "AttentionFn": 1, "AddFn": 6, "GeluFn": 1})
# Where the fused kernels run (the GPU, the stand-in), each family above is one node
FUSED_BLOCK_OPS = Counter({"FusedLayerNorm": 2, "LinearFn": 4, "FusedSelfAttention": 1,
                           "FusedBiasResidual": 2, "FusedGelu": 1})
FUSED_MLP_OPS = Counter({"LinearFn": 2, "ReluFn": 1, "FusedCrossEntropy": 1})


@pytest.fixture
def composite(monkeypatch):
    """The pictures teach the composite graph, so the graph tests draw it on every backend."""
    monkeypatch.setenv("MINIGRAD_FUSED", "0")


def mlp_loss(device: str = "cpu"):
    mg.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2)).to(device)
    x = mg.randn(4, 3, device=device)
    loss = F.cross_entropy(mlp[1](F.relu(mlp[0](x))), np.array([0, 1, 1, 0]))
    return loss, {"x": x, **dict(mlp.named_parameters())}


def block_out(device: str = "cpu"):
    mg.manual_seed(0)
    block = Block(GPT2Config(n_embd=8, n_head=2)).to(device)
    h = mg.randn(1, 4, 8, requires_grad=True, device=device)
    return block(h), {"x": h, **dict(block.named_parameters())}


def dot_ops(text: str) -> Counter:
    """The op nodes of DOT text, by name."""
    return Counter(re.findall(r'^  op\d+ \[shape=ellipse[^\n]*label="(\w+)"\];$', text, re.M))


def dot_tensors(text: str) -> list[str]:
    return re.findall(r'^  t\d+ \[shape=box[^\n]*label="([^"]*)"\];$', text, re.M)


def svg_ops(svg: str) -> Counter:
    """The op nodes Graphviz drew: each node is a <g class="node"> with its label as <text>."""
    nodes = re.findall(r'<g id="node\d+" class="node">(.*?)</g>', svg, re.S)
    ops = Counter()
    for node in nodes:
        if "<ellipse" in node:
            ops.update(re.findall(r">(\w+Fn)</text>", node))
    return ops


def test_mlp_loss_graph(backend, composite):
    loss, names = mlp_loss(backend)
    text = viz.to_dot(loss, names=names)
    assert text.startswith("digraph minigrad {") and text.rstrip().endswith("}")
    assert dot_ops(text) == MLP_OPS
    boxes = dot_tensors(text)
    assert "x\\n(4, 3) float32\\nconstant" in boxes                 # the input: nothing asked for its gradient
    assert "0.weight\\n(3, 8) float32\\nrequires grad" in boxes     # a parameter backward() will fill
    assert "1.bias\\n(2,) float32\\nrequires grad" in boxes
    assert "(4, 8) float32" in boxes and "() float32" in boxes        # results: a hidden layer, the loss
    # every edge: each op's inputs in, its result out (2 linears of 3 inputs, relu 1, cross-entropy 1)
    assert text.count("->") == (3 + 1) * 2 + (1 + 1) + (1 + 1)
    again, again_names = mlp_loss(backend)
    assert viz.to_dot(again, names=again_names) == text  # the same text for the same graph


def test_gpt2_block_graph(backend, composite):
    out, names = block_out(backend)
    text = viz.to_dot(out, names=names)
    assert dot_ops(text) == BLOCK_OPS
    boxes = dot_tensors(text)
    assert "x\\n(1, 4, 8) float32\\nrequires grad" in boxes
    assert "attn.c_attn.weight\\n(8, 24) float32\\nrequires grad" in boxes
    assert "mlp.c_fc.weight\\n(8, 32) float32\\nrequires grad" in boxes
    assert "(3, 1, 2, 4, 4) float32" in boxes                         # q, k, v stacked after the permute


def test_fused_path_draws_one_node_per_kernel(backend):
    """With the fused kernels on, a backend that runs them draws each fused family as one node."""
    from minigrad.kernels import use_fused
    probe = mg.randn(2, 2, device=backend)
    if not use_fused(probe.data):
        pytest.skip(f"the {backend} backend runs the composite ops")
    assert dot_ops(viz.to_dot(*mlp_loss(backend)[:1])) == FUSED_MLP_OPS
    assert dot_ops(viz.to_dot(block_out(backend)[0])) == FUSED_BLOCK_OPS


@needs_dot
@pytest.mark.parametrize("make, ops", [(mlp_loss, MLP_OPS), (block_out, BLOCK_OPS)], ids=["mlp", "block"])
def test_rendered_svg_holds_the_op_nodes(make, ops):
    root, names = make()
    svg = viz.render(root, "svg", names=names).decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert svg_ops(svg) == ops
    assert viz.render(root, "png", names=names).startswith(b"\x89PNG")


def test_without_dot_render_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "")
    loss, _ = mlp_loss()
    with pytest.raises(viz.GraphvizMissing, match=r"render: .*`dot`.*apt-get install graphviz"):
        viz.render(loss)
    assert "CrossEntropyFn" in viz.to_dot(loss)  # the text needs nothing


def test_gradients_show_and_a_freed_graph_is_refused():
    loss, names = mlp_loss()
    loss.backward(retain_graph=True)
    text = viz.to_dot(loss, names=names)
    assert "0.weight\\n(3, 8) float32\\nhas .grad" in dot_tensors(text)
    loss.backward()  # frees the graph
    with pytest.raises(RuntimeError, match="freed by backward.*retain_graph=True"):
        viz.to_dot(loss)


def test_bad_arguments():
    loss, _ = mlp_loss()
    with pytest.raises(TypeError, match="to_dot: root"):
        viz.to_dot(loss.data)
    with pytest.raises(ValueError, match="to_dot: rankdir"):
        viz.to_dot(loss, rankdir="up")
    with pytest.raises(ValueError, match="render: fmt"):
        viz.render(loss, "jpeg")


def test_the_committed_pictures_are_these_graphs():
    assert svg_ops((IMAGES / "mlp_graph.svg").read_text()) == MLP_OPS
    assert svg_ops((IMAGES / "gpt2_block_graph.svg").read_text()) == BLOCK_OPS
    guide = (ROOT / "minigrad" / "README.md").read_text()
    assert "../docs/images/mlp_graph.svg" in guide and "../docs/images/gpt2_block_graph.svg" in guide


@needs_dot
def test_the_guides_code_blocks_run_and_make_the_pictures(tmp_path, monkeypatch):
    """Every ```python block of minigrad/README.md, in order, in one namespace, in an empty folder."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "minigrad" / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"minigrad/README.md block {i}", "exec"), namespace)
    assert svg_ops((tmp_path / "mlp_graph.svg").read_text()) == MLP_OPS
    assert svg_ops((tmp_path / "gpt2_block_graph.svg").read_text()) == BLOCK_OPS

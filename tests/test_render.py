"""Rendering: DOT/SVG output, highlights, collapse and folding of large graphs, missing Graphviz,
and the terminal tree."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

import autograd_lens as lens
from autograd_lens import Graph, Highlight, LensError
from autograd_lens.render import dot as dot_mod
from autograd_lens.render import to_text

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")

SVG = "{http://www.w3.org/2000/svg}"


def drawn_nodes(dot: str) -> int:
    """Node statements in DOT text from ``to_dot`` (outputs, notes and the legend included)."""
    return len(re.findall(r"^  (?:[nmfo]\d+|more|legend) \[", dot, re.M))


@pytest.fixture
def two_nets() -> Graph:
    torch.manual_seed(0)
    netA = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    netB = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 1))
    x = torch.randn(2, 4, requires_grad=True)
    loss = netB(netA(x)).mean()
    return lens.draw(loss)


@needs_dot
def test_svg_parses_and_names_parameters(two_nets: Graph) -> None:
    svg = two_nets.to_svg()
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    for name in ("netA.0.weight", "netA.2.bias", "netB.1.weight", "netB.2.weight", "loss", "x"):
        assert name in text
    assert "AddmmBackward0" in text
    assert "legend" in text


def test_labels_are_escaped() -> None:
    x = torch.ones(2, requires_grad=True)
    g = lens.draw((x * 2).sum(), names=['a "quoted" <b>&</b>'], title="t<&>")
    dot = g.to_dot()
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in dot
    assert "<b>" not in dot
    assert "t&lt;&amp;&gt;" in dot


@needs_dot
def test_highlights_on_nodes_and_edges(two_nets: Graph, tmp_path: Path) -> None:
    mul = two_nets.find("TanhBackward0")[0].id
    consumer = two_nets.consumers_of(mul)[0]
    g = two_nets.with_highlights(
        Highlight("error", node=mul, label="saved tensor modified in place"),
        Highlight("leak", edge=(mul, consumer), label="detach here"),
    )
    dot = g.to_dot()
    assert "⚠ error: saved tensor modified in place" in dot
    assert "⚠ leak: detach here" in dot
    assert f"n{mul} -> n{consumer} [color=\"{dot_mod.ORANGE}\"" in dot
    assert dot_mod.RED in dot
    path = g.save(tmp_path / "out" / "h.svg")
    text = path.read_text()
    ET.fromstring(text)
    assert "detach here" in text


def test_legend_lists_only_what_appears(two_nets: Graph) -> None:
    dot = two_nets.to_dot()
    legend = dot[dot.index("cluster_legend") :]
    assert "parameter of netA" in legend and "parameter of netB" in legend
    assert "custom autograd.Function" not in legend
    assert "freed" not in legend
    assert "cluster_legend" not in two_nets.to_dot(legend=False)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.lin(x)))


@pytest.fixture(scope="module")
def big_module_graph() -> Graph:
    net = nn.Sequential(*[Block(4) for _ in range(100)])
    return lens.draw(net(torch.randn(2, 4)).sum(), params={"net": net})


def test_collapse_to_modules(big_module_graph: Graph) -> None:
    g = big_module_graph
    assert len(g) > 700
    dot = g.to_dot(max_nodes=500, collapse="module")
    assert drawn_nodes(dot) <= 500
    assert "modules at depth 3" in dot
    assert "<B>net.7.lin</B>: Linear" in dot and "2 ops · 2 params" in dot
    assert "<B>net.7</B>: Block" in dot  # the block around them is a cluster
    assert "box3d" in dot
    dot1 = g.to_dot(collapse="module", depth=1)
    assert "<B>net</B>: Sequential(100 × Block)" in dot1 and "modules at depth 1" in dot1
    assert drawn_nodes(dot1) <= 5


def test_collapse_folds_repeated_modules(big_module_graph: Graph) -> None:
    dot = big_module_graph.to_dot(max_nodes=50)
    assert drawn_nodes(dot) <= 50
    assert "×99 net.1 … net.99: Block" in dot
    assert "<B>net.#.lin.weight</B>" in dot and "one of 99, one per instance" in dot


def test_highlight_survives_collapse(big_module_graph: Graph) -> None:
    node = next(n for n in big_module_graph.nodes if n.module == "net.42.norm")
    g = big_module_graph.with_highlights(Highlight("stray", node=node.id, label="look here"))
    dot = g.to_dot(max_nodes=50)
    assert drawn_nodes(dot) <= 50
    assert f"  n{node.id} [" in dot
    assert "⚠ stray: look here" in dot


def test_fold_repeated_chain() -> None:
    x = torch.randn(3, requires_grad=True)
    y = x
    for _ in range(400):
        y = torch.tanh(y) * 0.9
    g = lens.draw(y.sum())
    assert len(g) == 802
    for kwargs in ({"collapse": "fold"}, {"max_nodes": 100}):
        dot = g.to_dot(**kwargs)
        assert "×400 TanhBackward0 → MulBackward0" in dot
        assert drawn_nodes(dot) <= 10
    assert "×400" not in g.to_dot()  # fits: drawn in full
    assert drawn_nodes(g.to_dot()) > 800


def test_truncation_keeps_within_max_nodes() -> None:
    x = torch.randn(3, requires_grad=True)
    parts = [torch.sin(x * float(i)) for i in range(300)]
    g = lens.draw(torch.stack(parts).sum())
    dot = g.to_dot(max_nodes=40, fold=False)
    assert drawn_nodes(dot) <= 40
    assert re.search(r"… \d+ more nodes not shown", dot)
    assert "SumBackward0" in dot  # nearest the output stays


def test_nslimit_for_large_drawings() -> None:
    x = torch.randn(3, requires_grad=True)
    parts = [torch.sin(x * float(i)) for i in range(600)]
    g = lens.draw(torch.stack(parts).sum())
    assert "nslimit=0.01" in g.to_dot(collapse="none", max_nodes=5000)
    assert "nslimit" not in g.to_dot(max_nodes=100)


def test_options_from_draw_and_explicit_override() -> None:
    x = torch.randn(3, requires_grad=True)
    g = lens.draw((x * 2).sum(), show_saved=False, rankdir="LR")
    assert "rankdir=LR" in g.to_dot()
    assert "rankdir=TB" in g.to_dot(rankdir="TB")
    with pytest.raises(LensError, match="collapse='sideways'.*auto, module, fold, none"):
        g.to_dot(collapse="sideways")


def test_missing_dot(two_nets: Graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(dot_mod.shutil, "which", lambda name: None)
    with pytest.raises(LensError) as info:
        two_nets.save(tmp_path / "g.svg")
    message = str(info.value)
    assert "apt-get install graphviz" in message
    assert "brew install graphviz" in message
    assert "conda install graphviz" in message
    assert ".dot and .json" in message
    assert not (tmp_path / "g.svg").exists()
    shown = two_nets._repr_mimebundle_()["text/html"]  # a notebook shows the tree and the hint
    assert "<svg" not in shown and "apt-get install graphviz" in shown and "AddmmBackward0" in shown
    assert two_nets.save(tmp_path / "g.dot").read_text().startswith("digraph")
    assert two_nets.save(tmp_path / "g.gv").exists()
    assert Graph.from_json(two_nets.save(tmp_path / "g.json")) == two_nets


def test_save_errors(two_nets: Graph, tmp_path: Path) -> None:
    with pytest.raises(LensError, match=r"'\.txt'.*\.svg, \.png, \.pdf, \.dot, \.gv, \.json"):
        two_nets.save(tmp_path / "g.txt")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LensError, match="cannot write"):
        two_nets.save(blocker / "g.dot")


@needs_dot
def test_dot_timeout(two_nets: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*args: object, **kwargs: object) -> None:
        raise dot_mod.subprocess.TimeoutExpired(cmd="dot", timeout=0.01)

    monkeypatch.setattr(dot_mod.subprocess, "run", slow)
    monkeypatch.setattr(dot_mod, "_LAID_OUT", {})  # no layout made earlier
    with pytest.raises(LensError, match="did not finish.*0.01 s"):
        two_nets.to_svg(timeout=0.01)


def test_tree_text(two_nets: Graph) -> None:
    text = to_text(two_nets)
    assert text == str(two_nets)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("autograd graph")
    assert "loss scalar float32 output" in text
    for op in ("MeanBackward0", "AddmmBackward0", "NativeLayerNormBackward0", "TanhBackward0"):
        assert op in text
    assert "netA.0.weight (6, 4) param" in text
    assert "x (2, 4) input" in text


def test_tree_shared_nodes_and_truncation() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    z = (x**2) * 4
    g = lens.draw(z.mean(), z.sum())
    text = to_text(g)
    assert text.count("MulBackward0") == 2  # once in full, once as a reference
    assert text.count("PowBackward0") == 1
    assert "(see above)" in text
    y = x
    for _ in range(1000):
        y = torch.tanh(y)
    deep = to_text(lens.draw(y.sum()))
    assert len(deep.splitlines()) <= 205
    assert re.search(r"… \d+ more nodes", deep)
    assert all(len(line) <= 100 for line in deep.splitlines())


def test_example_draw_two_nets(tmp_path: Path) -> None:
    import runpy

    example = Path(__file__).resolve().parent.parent / "examples" / "draw_two_nets.py"
    module = runpy.run_path(str(example))
    dot = module["main"](tmp_path / "graph.dot").read_text()
    assert 'label="fake: netA → netB"' in dot  # marked by draw() itself
    assert "buffers freed" in dot
    assert "netA.0.weight" in dot and "netB.3.bias" in dot


def _gan_step() -> tuple[lens.Watch, torch.Tensor, nn.Module, nn.Module]:
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    netD = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    optG = torch.optim.SGD(netG.parameters(), lr=0.1)
    optD = torch.optim.SGD(netD.parameters(), lr=0.1)
    with lens.watch() as w:
        for _ in range(2):
            fake = netG(torch.randn(5, 4))
            optD.zero_grad()
            errD = netD(fake).mean()  # no .detach(): errD writes into netG too
            errD.backward(retain_graph=True)
            optD.step()
            errG = -netD(fake).mean()
            errG.backward()
            optG.step()
    return w, errD, netG, netD


def test_draw_marks_where_one_network_enters_another() -> None:
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    netD = nn.Sequential(nn.Linear(3, 1))
    fake = netG(torch.randn(2, 4))
    g = lens.draw(netD(fake).sum())
    crossing = [h for h in g.highlights if h.tag == "crossing"]
    assert [h.label for h in crossing] == ["fake: netG → netD"]
    a, b = crossing[0].edge
    assert g.nodes[a].module.startswith("netG") and g.nodes[b].module == "netD.0"
    assert 'label="fake: netG → netD"' in g.to_dot()
    detached = lens.draw(netD(fake.detach()).sum())
    assert not [h for h in detached.highlights if h.tag == "crossing"]


def test_draw_with_findings_marks_what_they_name() -> None:
    w, errD, netG, netD = _gan_step()  # the networks in this frame name the parameters
    stray = next(f for f in w.report.findings if f.rule == "stray-grad")
    for given in (w.report.findings, w.report, w):
        g = lens.draw(errD, findings=given)
        marked = {g.nodes[h.node].name for h in g.highlights if h.tag == "stray"}
        assert marked == set(stray.params) and marked
        labels = {h.label for h in g.highlights if h.tag == "stray"}
        assert labels == {f"stepped by `optG.step()` (line {stray.site.line})"}
        assert any(h.tag == "leak" and h.label == "fake: detach here" for h in g.highlights)
    with pytest.raises(LensError, match="findings= takes a list of findings, a Report or a watch; got int 3"):
        lens.draw(errD, findings=3)
    with pytest.raises(LensError, match="findings= takes Finding objects"):
        lens.draw(errD, findings=["stray-grad"])

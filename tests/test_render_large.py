"""Drawing graphs at real sizes: an unrolled 2-layer LSTM, a 1000-step RNN with one shared ``W``,
a 300-layer MLP, a 12-layer transformer and a 100,000-node chain. What reaches ``dot`` is
asserted (folds, counts, clusters, boxes, the layout budget); the layouts themselves are timed by
``benchmarks/render.py``, not here."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from typing import Any

import pytest

import autograd_lens as lens
from autograd_lens import Graph
from autograd_lens.render import dot as dot_mod
from autograd_lens.render.dot import build, resolve_options
from autograd_lens.render.layout import BUDGET, Plan, find_folds, pinned

import graph_models as gm
from graph_models import in_big_stack

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


def drawn(builder: Callable[..., tuple[list[Any], dict[str, Any]]], *args: Any) -> Graph:
    outs, params = builder(*args)
    return lens.draw(*outs, params=params)


def plan_of(graph: Graph, **options: Any) -> tuple[str, Plan]:
    return build(graph, resolve_options(graph, options))


@pytest.fixture(scope="module")
def lstm() -> Graph:
    return drawn(gm.lstm, 20)


@pytest.fixture(scope="module")
def rnn() -> Graph:
    return drawn(gm.rnn, 1000)


@pytest.fixture(scope="module")
def mlp() -> Graph:
    return drawn(gm.mlp, 300)


@pytest.fixture(scope="module")
def transformer() -> Graph:
    return drawn(gm.transformer, 12)


def test_lstm_steps_fold_into_one_step_of_both_cells(lstm: Graph) -> None:
    assert len(lstm) > 600
    dot, p = plan_of(lstm)
    assert p.cost <= BUDGET
    assert [f.label for f in p.folds.values()] == ["×18 step: model.cell1 → model.cell2"]
    assert "<B>×18 step: model.cell1 → model.cell2</B>" in dot
    assert "<B>model.cell1</B>: LSTMCell" in dot and "<B>model</B>: StackedLSTM" in dot
    # the shared weights enter the fold once, with the count of steps on the edge
    weight = next(n.id for n in lstm.nodes if n.name == "model.cell1.weight_hh")
    assert dot.count(f"  n{weight} [") == 1
    assert re.search(rf"n{weight} -> n\d+ \[label=\"×18\"", dot)
    assert 'label="next ×17"' in dot  # the state handed from one step to the next
    assert p.boxes_drawn < 130


def test_rnn_with_one_shared_weight(rnn: Graph) -> None:
    assert len(rnn) == 4003
    dot, p = plan_of(rnn)
    fold = next(iter(p.folds.values()))
    assert fold.count == 999 and fold.label == "×999 MmBackward0 → MmBackward0 → AddBackward0 → TanhBackward0"
    assert p.boxes_drawn < 20
    w = next(n.id for n in rnn.nodes if n.name == "W")
    assert re.search(rf"n{w} -> n\d+ \[label=\"×999\" penwidth=2", dot)
    assert 'label="next ×998"' in dot


def test_mlp_of_300_identical_blocks(mlp: Graph) -> None:
    assert len(mlp) == 2401
    dot, p = plan_of(mlp)
    assert [f.label for f in p.folds.values()] == ["×299 net.1 … net.299: Sequential(Linear, LayerNorm, GELU)"]
    assert "<B>net</B>: Sequential(300 × Sequential)" in dot
    assert "<B>net.#.0.weight</B>" in dot and "one of 299, one per instance" in dot
    assert p.boxes_drawn < 30  # not a 600-box strip


def test_transformer_layers_fold(transformer: Graph) -> None:
    dot, p = plan_of(transformer)
    labels = [f.label for f in p.folds.values()]
    assert labels == ["×10 encoder.layers.1 … encoder.layers.10: TransformerEncoderLayer"]
    assert "<B>encoder.layers.0</B>: TransformerEncoderLayer" in dot
    assert p.cost <= BUDGET


def test_folds_come_from_structure_not_names() -> None:
    """The same chain folds with or without module names, and a highlighted step stays out."""
    outs, _ = gm.rnn(50)
    g = lens.draw(*outs)  # no names at all
    folds = find_folds(g, pinned(g))
    assert len(folds) == 1 and folds[0].count == 49
    tanh = [n.id for n in g.nodes if n.op == "TanhBackward0"]
    marked = g.with_highlights(lens.Highlight("focus", node=sorted(tanh)[len(tanh) // 2], label="look"))
    split = find_folds(marked, pinned(marked))
    assert len(split) == 2 and sum(f.count for f in split) == 48  # the marked step drawn in full
    dot = marked.to_dot()
    assert "⚠ focus: look" in dot


def test_budget_falls_back_to_coarser_levels_and_says_so(mlp: Graph, rnn: Graph) -> None:
    dot, p = plan_of(mlp, fold=False)
    assert p.depth == 2 and p.cost <= BUDGET
    assert "modules at depth 2 (collapsed to fit)" in dot
    dot, p = plan_of(rnn, fold=False)  # no modules to collapse: cut, nearest the outputs kept
    assert p.hidden > 3000 and p.cost <= BUDGET
    assert re.search(r"cut to fit: the \d+ boxes nearest the outputs", dot)
    assert "SumBackward0" in dot
    # a smaller budget is honoured too
    _, small = plan_of(rnn, fold=False, budget=500)
    assert small.cost <= 500 < p.cost


def test_opening_a_fold_or_a_module(mlp: Graph) -> None:
    _, p = plan_of(mlp)
    fold = next(iter(p.folds.values()))
    dot, opened = plan_of(mlp, open=(fold.ident,))
    assert fold.ident not in {f.ident for f in opened.folds.values()}
    assert opened.cost <= BUDGET  # opened, then fitted: modules collapse instead
    _, boxed = plan_of(mlp, collapse="module", depth=2)
    box = next(b for b in boxed.boxes.values() if b.module == "net.5")
    dot, box_open = plan_of(mlp, collapse="module", depth=2, open=(box.ident,))
    modules = {b.module for b in box_open.boxes.values()}
    assert "net.5" not in modules and "net.4" in modules
    assert "<B>net.5.0.weight</B>" in dot and "<B>net.5</B>: Sequential(Linear, LayerNorm, GELU)" in dot


@needs_dot
@pytest.mark.parametrize("name", ["lstm", "rnn", "mlp", "transformer"])
def test_svg_of_each_graph_without_a_timeout(name: str, request: pytest.FixtureRequest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    graph: Graph = request.getfixturevalue(name)
    timeouts: list[float] = []
    run = dot_mod.subprocess.run

    def watched(*args: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs["timeout"])
        return run(*args, **kwargs)

    monkeypatch.setattr(dot_mod.subprocess, "run", watched)
    monkeypatch.setattr(dot_mod, "_LAID_OUT", {})
    svg = graph.to_svg()
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg
    assert len(timeouts) == 1  # laid out once: the first plan fit, no coarser retry
    assert "drawn coarser" not in svg


@needs_dot
def test_chain_of_100k_nodes() -> None:
    def body() -> None:
        outs, _ = gm.chain(100_000)
        g = lens.draw(*outs)
        assert len(g) == 100_002
        dot, p = plan_of(g)
        assert [f.label for f in p.folds.values()] == ["×50000 TanhBackward0 → MulBackward0"]
        assert p.boxes_drawn < 10
        svg = dot_mod.lay_out(g, "svg")[0].decode()
        assert "×50000 TanhBackward0 → MulBackward0" in svg

    in_big_stack(body)


@needs_dot
def test_a_layout_that_runs_out_of_time_is_drawn_again_coarser(mlp: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    run = dot_mod.run_dot
    calls: list[str] = []

    def first_times_out(source: str, fmt: str, **kwargs: Any) -> bytes:
        calls.append(source)
        if len(calls) == 1:
            raise dot_mod.DotTimeout("`dot` did not finish laying out the graph within 0.5 s")
        return run(source, fmt, **kwargs)

    monkeypatch.setattr(dot_mod, "run_dot", first_times_out)
    svg = mlp.to_svg(timeout=0.5, fold=False)
    assert len(calls) == 2
    assert "drawn coarser: the layout did not finish within 0.5 s" in svg
    assert "drawn coarser" not in calls[0]


def test_layout_cost_counts_long_edges_through_cycles() -> None:
    from autograd_lens.render.layout import layout_cost

    chain = [(k, k + 1) for k in range(1, 20)]
    fan = [(0, k) for k in range(1, 21)]  # one box that feeds every step ...
    assert layout_cost(21, chain + fan)[1] >= sum(range(19))  # ... sends edges across the ranks
    back = [(k, 0) for k in range(1, 21)]  # ... and takes each step's output back: a cycle
    cost, span = layout_cost(21, chain + fan + back)
    assert span >= sum(range(19)) and cost > 21 + 59
    assert layout_cost(3, [(0, 1), (1, 2), (2, 0)]) == (7, 1)  # 3 boxes, 3 edges, one drawn backwards

"""Graph capture: shared nodes, naming across networks, custom Functions, freed buffers, deep
chains, JSON round trips and bad input."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import autograd_lens as lens
from autograd_lens import Graph, LensError
from autograd_lens.graph import CUSTOM, INPUT, PARAM

from graph_models import in_big_stack


def test_two_outputs_share_nodes() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x**2
    z = y * 4
    g = lens.draw(z.mean(), z.sum())
    ops = [n.op for n in g.nodes]
    assert ops.count("PowBackward0") == 1
    assert ops.count("MulBackward0") == 1
    assert len(g.outputs) == 2
    mul = g.find("MulBackward0")[0].id
    assert g.consumers_of(mul) == sorted(o.node for o in g.outputs) or set(g.consumers_of(mul)) == {
        o.node for o in g.outputs
    }
    assert [n.kind for n in g.nodes].count(INPUT) == 1


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    netA = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    netB = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    return netA, netB


def test_detach_cuts_the_graph_between_networks() -> None:
    netA, netB = _nets()
    x = torch.randn(2, 4)
    fake = netA(x)

    loss = netB(fake).mean()
    g = lens.draw(loss)
    assert {"netA.0.weight", "netA.0.bias", "netA.2.weight", "netB.0.weight", "netB.2.bias"} <= set(
        g.param_names
    )
    loss_detached = netB(fake.detach()).mean()
    g2 = lens.draw(loss_detached)
    assert not [p for p in g2.param_names if p.startswith("netA.")]
    assert {"netB.0.weight", "netB.0.bias", "netB.2.weight", "netB.2.bias"} == set(g2.param_names)
    # ops are attributed to the module whose parameters they use
    assert {n.module for n in g.nodes if n.op == "AddmmBackward0"} == {"netA.0", "netA.2", "netB.0", "netB.2"}


class LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = ctx.saved_tensors
        return grad @ w, grad.t() @ x


def test_custom_function_shows_saved_tensors() -> None:
    w = nn.Parameter(torch.randn(3, 4))
    x = torch.randn(2, 4, requires_grad=True)
    out = LinearFn.apply(x, w).sum()
    g = lens.draw(out, params={"layer.weight": w})
    custom = [n for n in g.nodes if n.kind == CUSTOM]
    assert len(custom) == 1
    node = custom[0]
    assert node.op == "LinearFnBackward"
    assert [s.shape for s in node.saved] == [(2, 4), (3, 4)]
    assert all(s.name.startswith("tensors") for s in node.saved)
    assert node.saved[1].param == "layer.weight"
    assert "LinearFnBackward" in g.to_dot()


def test_saved_views_of_a_parameter_are_named_by_it() -> None:
    """A matmul saves ``W.t()`` and an op on a slice saves ``W[1:]``, whose data starts past the
    parameter's: both are named by the parameter they view; a plain tensor is not."""
    net = nn.Linear(4, 3)
    x = torch.randn(2, 4, requires_grad=True)
    h = net(x)  # addmm saves net.weight.t()
    rows = net.weight[1:]  # an offset view: its data_ptr is not the weight's
    out = (h.sum(0, keepdim=True).t()[1:] * rows).sum()
    g = lens.draw(out, params={"net": net})
    by_name = {(n.op, s.name): s.param for n in g.nodes for s in n.saved}
    assert rows.data_ptr() != net.weight.data_ptr()
    assert by_name[("AddmmBackward0", "mat2")] == "net.weight"
    assert by_name[("MulBackward0", "other")] == "net.weight"
    assert by_name[("AddmmBackward0", "mat1")] is None and by_name[("MulBackward0", "self")] is None


def test_draw_after_backward_marks_freed_nodes() -> None:
    netA, netB = _nets()
    out1 = netB(netA(torch.randn(2, 4))).mean()
    before = lens.draw(out1)
    assert not before.freed_nodes
    out1.backward()
    g = lens.draw(out1)
    assert g.freed_nodes
    assert all(n.kind not in (PARAM, INPUT) for n in g.freed_nodes)
    assert any(s.freed for n in g.freed_nodes for s in n.saved)
    assert "buffers freed" in g.to_dot()


def test_deep_chain_is_captured_without_recursion() -> None:
    def body() -> None:
        x = torch.ones(1, requires_grad=True)
        y = x
        for _ in range(100_000):
            y = y + 1
        g = lens.draw(y)
        assert len(g) == 100_001
        dot = g.to_dot()
        assert dot.startswith("digraph")
        folded = re.search(r"×(\d+) AddBackward0", dot)
        assert folded is not None and int(folded.group(1)) >= 99_990

    in_big_stack(body)


def test_json_round_trip(tmp_path) -> None:
    netA, netB = _nets()
    loss = netB(netA(torch.randn(2, 4))).mean()
    g = lens.draw(loss, title='netA "->" netB')
    g = g.with_highlights(lens.Highlight("leak", edge=(g.nodes[1].id, g.nodes[0].id), label="detach <here>"))
    assert Graph.from_json(g.to_json()) == g
    path = g.save(tmp_path / "sub" / "g.json")
    assert path.exists()
    assert Graph.from_json(path) == g
    assert Graph.from_json(str(path)) == g


def test_draw_needs_a_graph() -> None:
    with pytest.raises(LensError, match=r"shape \(3,\).*no grad_fn"):
        lens.draw(torch.ones(3))


@pytest.mark.parametrize(
    ("value", "shown"),
    [([1, 2, 3], "int 1"), ("loss", "str 'loss'"), (None, "NoneType None")],
)
def test_draw_rejects_non_tensors(value: object, shown: str) -> None:
    with pytest.raises(LensError) as info:
        lens.draw(value)
    message = str(info.value)
    assert shown in message
    assert "tensor" in message


def test_draw_rejects_an_empty_list() -> None:
    with pytest.raises(LensError, match="at least one tensor.*empty list"):
        lens.draw([])


def test_module_of_seq_attributes_ops_to_the_module_that_ran_them() -> None:
    from autograd_lens.graph import capture
    from autograd_lens.naming import ParamNames

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    loss = net(torch.randn(2, 3)).pow(2).mean()
    names = ParamNames.build({"net": net})
    plain = capture([loss], names=names)
    tanh = next(n for n in plain.nodes if n.op == "TanhBackward0")
    assert tanh.module == "net.0"  # by the parameters its input used
    ran = {tanh.seq: "net.1"}
    g = capture([loss], names=names, module_of_seq=ran.get)
    assert next(n for n in g.nodes if n.op == "TanhBackward0").module == "net.1"
    # ops the callable does not name keep the attribution by parameters
    assert {n.module for n in g.nodes if n.op == "AddmmBackward0"} == {"net.0", "net.2"}
    assert g.module_types["net.1"] == "Tanh" and g.module_types["net"] == "Sequential"

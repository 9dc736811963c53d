"""``draw()``: the public entry point that captures a graph for the user."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import LensError, describe
from .graph import Graph, _as_tensor_list, capture, no_gc
from .naming import ParamNames, tensor_names, user_frame
from .render.marks import crossings, findings_about, from_any, mark

RENDER_OPTIONS = ("max_nodes", "collapse", "fold", "show_saved", "legend", "rankdir", "timeout", "depth", "budget")


def draw(
    *tensors: torch.Tensor | Sequence[torch.Tensor],
    params: Any = None,
    names: Sequence[str] | Mapping[str, torch.Tensor] | None = None,
    title: str = "",
    findings: Any = None,
    **options: Any,
) -> Graph:
    """Capture the autograd graph behind one or more output tensors.

    Args:
        tensors: outputs (losses) whose graphs to draw; several outputs share their common nodes.
        params: how to name parameters: a module, a list of modules, or a dict of names to modules
            or tensors. By default, the modules held by the caller's variables name them
            (``netG.main.0.weight``).
        names: names for the outputs, in order (default: the caller's variable names).
        title: a title for the drawing.
        findings: findings to mark on the drawing (``w.report.findings``, a ``Report`` or the
            watch itself): the parameters a stray step used, the edge where ``.detach()``
            belongs, the nodes whose buffers a backward freed. Edges where one network's output
            enters another are marked without it, labelled with the variable (``fake``).
        options: default render options kept with the graph (``max_nodes``, ``collapse``,
            ``fold``, ``show_saved``, ``legend``, ``rankdir``, ``timeout``, ``depth``).

    Returns:
        a :class:`Graph`. ``graph.save("loss.svg")`` writes it; in a notebook it shows inline.
        Large graphs are drawn folded and collapsed to fit (see ``render.layout``).

    Example::

        g = lens.draw(loss)
        g.save("loss.svg")
    """
    unknown = sorted(set(options) - set(RENDER_OPTIONS))
    if unknown:
        raise LensError(f"draw() got unknown option(s) {', '.join(unknown)}; known: {', '.join(RENDER_OPTIONS)}")
    if isinstance(names, Mapping):
        if tensors:
            raise LensError("draw() takes tensors either positionally or as names={name: tensor}, not both")
        tensors = tuple(names.values())
        names = list(names.keys())
    tlist = _as_tensor_list(tensors)
    marks_for = from_any(findings)
    frame = user_frame()
    try:
        param_names = ParamNames.build(params, frame, storages=False)  # views are found by their base
        var_names = tensor_names(frame, grad_fns=True)  # tensors and their grad_fns, by id
    finally:
        del frame
    for t in tlist:
        if t.grad_fn is None and not t.requires_grad:
            raise LensError(
                f"draw() needs a tensor that is part of an autograd graph; got {describe(t)}, which has "
                "no grad_fn and does not require grad (computed under no_grad, detached, or from "
                "inputs that do not require grad)"
            )
    out_names = list(names) if names is not None else [var_names.get(id(t), f"output{i if i else ''}") for i, t in enumerate(tlist)]
    index: dict[int, int] = {}
    with no_gc():  # until the records are made: see capture
        graph = capture(tlist, names=param_names, output_names=out_names, input_names=var_names, title=title,
                        node_index=index)
        var_of_node = {index[fid]: name for fid, name in var_names.items() if fid in index}
        index.clear()
        if len({m.partition(".")[0] for m in param_names.module_types}) > 1:  # two networks or more
            graph = graph.with_highlights(*crossings(graph, var_of_node))
        if marks_for:
            graph = mark(graph, findings_about(graph, marks_for), title=False)
    if options:
        graph = dataclasses.replace(graph, options=dict(options))
    return graph

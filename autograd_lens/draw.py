"""``draw()``: the public entry point that captures a graph for the user."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import LensError, describe
from .graph import Graph, _as_tensor_list, capture
from .naming import ParamNames, tensor_names, user_frame

RENDER_OPTIONS = ("max_nodes", "collapse", "fold", "show_saved", "legend", "rankdir", "timeout", "depth")


def draw(
    *tensors: torch.Tensor | Sequence[torch.Tensor],
    params: Any = None,
    names: Sequence[str] | Mapping[str, torch.Tensor] | None = None,
    title: str = "",
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
        options: default render options kept with the graph (``max_nodes``, ``collapse``,
            ``fold``, ``show_saved``, ``legend``, ``rankdir``, ``timeout``, ``depth``).

    Returns:
        a :class:`Graph`. ``graph.save("loss.svg")`` writes it; in a notebook it shows inline.

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
    frame = user_frame()
    try:
        param_names = ParamNames.build(params, frame)
        var_names = tensor_names(frame)
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
    graph = capture(tlist, names=param_names, output_names=out_names, input_names=var_names, title=title)
    if options:
        graph = dataclasses.replace(graph, options=dict(options))
    return graph

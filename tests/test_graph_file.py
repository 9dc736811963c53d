"""Hostile and corrupt graph files: ``Graph.from_dict``/``from_json`` and ``lens draw`` check them
against the graph schema. Never a traceback, never a drawing of something the file does not say.

Property-based: hypothesis builds valid graph files, and mutates them (a field replaced by a
value of another type, a negative or huge number, a key removed, an item added)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autograd_lens import Graph, LensError
from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main
from autograd_lens.graph import HIGHLIGHTS, KINDS, SCHEMA
from autograd_lens.graphfile import MAX_DIMS

FAST = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def small_graph() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "title": "loss",
        "nodes": [
            {"id": 0, "op": "AccumulateGrad", "kind": "param", "name": "net.weight", "module": "net",
             "shape": [2, 3], "dtype": "float32", "saved": [], "freed": False, "seq": None, "ctx_tensors": []},
            {"id": 1, "op": "MmBackward0", "kind": "op", "name": None, "module": "net", "shape": [4, 2],
             "dtype": "float32",
             "saved": [{"name": "self", "shape": [4, 3], "dtype": "float32", "nbytes": 48, "freed": False,
                        "param": None}],
             "freed": False, "seq": 7, "ctx_tensors": []},
            {"id": 2, "op": "SumBackward0", "kind": "op", "name": None, "module": None, "shape": [],
             "dtype": "float32", "saved": [], "freed": True, "seq": 8, "ctx_tensors": []},
        ],
        "edges": [[0, 1], [1, 2]],
        "outputs": [{"name": "loss", "node": 2, "shape": [], "dtype": "float32"}],
        "highlights": [{"tag": "leak", "node": None, "edge": [0, 1], "label": "here"}],
    }


def draw(tmp_path: Path, content: str | bytes, *extra: str) -> Any:
    path = tmp_path / "g.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return CliRunner().invoke(main, ["draw", str(path), "-o", str(tmp_path / "g.dot"), *extra])


def assert_one_line_usage_error(result: Any) -> None:
    assert result.exit_code == exit_codes.USAGE, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lens: error: "), result.stderr


def test_a_valid_graph_file_draws(tmp_path: Path) -> None:
    result = draw(tmp_path, json.dumps(small_graph()))
    assert result.exit_code == exit_codes.OK, result.output
    assert "MmBackward0" in (tmp_path / "g.dot").read_text()
    assert Graph.from_dict(small_graph()).to_dict() == small_graph()


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("edges", 0, 0), -1, "edges[0][0]: -1 is not a node id (the graph has 3 nodes)"),
        (("edges", 1, 1), 3, "edges[1][1]: 3 is not a node id"),
        (("edges", 0, 1), 10**400, "edges[0][1]: a number of 401 digits is not a node id"),
        (("edges", 0), [0, 1, 2], "edges[0]: expected [producer, consumer], got 3 items"),
        (("edges", 1), [2, 2], "edges: form a cycle"),
        (("nodes", 1, "id"), 5, "nodes[1].id: is 5; node ids must equal their place in the list (1)"),
        (("nodes", 1, "id"), True, "nodes[1].id: expected a whole number, got a boolean"),
        (("nodes", 1, "op"), ["MmBackward0"], "nodes[1].op: expected a string, got a list"),
        (("nodes", 1, "kind"), "tensor", "nodes[1].kind: 'tensor' is not one of op, param"),
        (("nodes", 1, "shape"), [4, -2], "nodes[1].shape[1]: -2 is out of range"),
        (("nodes", 1, "shape"), [4, 2.5], "nodes[1].shape[1]: expected a whole number, got a number with a fraction"),
        (("nodes", 1, "shape"), [1] * (MAX_DIMS + 1), "nodes[1].shape: has 65 items; at most 64 are allowed"),
        (("nodes", 1, "saved", 0, "nbytes"), 2**70, "nodes[1].saved[0].nbytes: 1180591620717411303424 is out of range"),
        (("nodes", 1, "saved", 0, "freed"), "no", "nodes[1].saved[0].freed: expected true or false, got a string"),
        (("nodes", 1, "saved"), {"name": "x"}, "nodes[1].saved: expected a list, got an object"),
        (("nodes", 2, "ctx_tensors"), [None], "nodes[2].ctx_tensors[0]: expected a string, got null"),
        (("outputs", 0, "node"), -1, "outputs[0].node: -1 is not a node id"),
        (("highlights", 0, "edge"), [1, 0], "highlights[0].edge: [1, 0] is not an edge of the graph"),
        (("highlights", 0, "tag"), "sparkle", "highlights[0].tag: 'sparkle' is not one of freed"),
        (("nodes", 0), "AccumulateGrad", "nodes[0]: expected an object, got a string"),
        (("title",), {"a": 1}, "title: expected a string, got an object"),
    ],
)
def test_corrupt_fields_are_one_line_errors(tmp_path: Path, path: tuple[Any, ...], value: Any, message: str) -> None:
    data = _set(small_graph(), path, value)
    with pytest.raises(LensError) as info:
        Graph.from_dict(data)
    assert str(info.value).startswith("invalid autograd_lens graph: " + message), str(info.value)
    result = draw(tmp_path, json.dumps(data))
    assert_one_line_usage_error(result)
    assert message in result.stderr
    assert not (tmp_path / "g.dot").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"schema": "autograd_lens.graph/1", "nodes": [], "edges": [], "outputs": [], "title": '
         + '"' + "x" * 10 + '", "n": ' + "9" * 5000 + "}", "is not valid JSON"),
        ('{"schema": "autograd_lens.graph/1", "nodes": NaN, "edges": [], "outputs": []}', "nodes: expected a list, got nan"),
        (b"\xff\xfe\x00garbage", "is not text"),
        ("", "is not valid JSON"),
        ("null", "not an autograd_lens graph"),
        ('{"schema": "autograd_lens.graph/1"}', "has no 'nodes'"),
    ],
)
def test_hostile_files_are_one_line_errors(tmp_path: Path, content: str | bytes, message: str) -> None:
    result = draw(tmp_path, content)
    assert_one_line_usage_error(result)
    assert message in result.stderr


def test_from_json_gives_lens_errors_for_hostile_text(tmp_path: Path) -> None:
    with pytest.raises(LensError, match="nested too deeply"):
        Graph.from_json('{"a":' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(LensError, match="not valid JSON"):
        Graph.from_json('{"schema": 1' + "1" * 5000 + "}")
    with pytest.raises(LensError, match="cannot read graph file"):
        Graph.from_json(tmp_path / "missing.json")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "soon", "1e400"])
def test_draw_timeout_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    result = draw(tmp_path, json.dumps(small_graph()), "--timeout", value)
    assert_one_line_usage_error(result)
    assert "--timeout" in result.stderr


def test_draw_timeout_accepts_seconds(tmp_path: Path) -> None:
    assert draw(tmp_path, json.dumps(small_graph()), "--timeout", "2.5").exit_code == exit_codes.OK


# ----------------------------------------------------------------------------------------------
# property-based
# ----------------------------------------------------------------------------------------------

names = st.one_of(st.none(), st.text(max_size=12))
shapes = st.lists(st.integers(0, 2**20), max_size=4)


@st.composite
def graph_files(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 10))
    nodes = []
    for i in range(n):
        nodes.append(
            {
                "id": i,
                "op": draw(st.sampled_from(["MulBackward0", "AccumulateGrad", "AddmmBackward0", "Fn", "x"])),
                "kind": draw(st.sampled_from(KINDS)),
                "name": draw(names),
                "module": draw(st.one_of(st.none(), st.sampled_from(["net", "net.0", "a.b.c"]))),
                "shape": draw(st.one_of(st.none(), shapes)),
                "dtype": draw(st.one_of(st.none(), st.sampled_from(["float32", "float64"]))),
                "saved": [
                    {"name": draw(st.text(max_size=6)), "shape": draw(st.one_of(st.none(), shapes)),
                     "dtype": "float32", "nbytes": draw(st.integers(0, 2**40)), "freed": draw(st.booleans()),
                     "param": draw(names)}
                    for _ in range(draw(st.integers(0, 2)))
                ],
                "freed": draw(st.booleans()),
                "seq": draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
                "ctx_tensors": draw(st.lists(st.text(max_size=5), max_size=2)),
            }
        )
    # edges run from a producer to a consumer of a higher id: no cycle
    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] < p[1])
    edges = [list(p) for p in draw(st.lists(pairs, max_size=2 * n))] if n > 1 else []
    outputs = [
        {"name": draw(st.text(max_size=6)), "node": draw(st.one_of(st.none(), st.integers(0, n - 1))),
         "shape": draw(shapes), "dtype": "float32"}
        for _ in range(draw(st.integers(0, 2)))
    ]
    highlights = []
    for _ in range(draw(st.integers(0, 3))):
        h = {"tag": draw(st.sampled_from(HIGHLIGHTS)), "node": None, "edge": None, "label": draw(st.text(max_size=8))}
        if edges and draw(st.booleans()):
            h["edge"] = list(draw(st.sampled_from(edges)))
        else:
            h["node"] = draw(st.integers(0, n - 1))
        highlights.append(h)
    return {"schema": SCHEMA, "title": draw(st.text(max_size=10)), "nodes": nodes, "edges": edges,
            "outputs": outputs, "highlights": highlights}


hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, -2, 2**63, 2**64, 10**40, 0, 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_graph_files(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(graph_files())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["replace", "delete", "append"]))
        if how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "append" and isinstance(parent[path[-1]], list):
            parent[path[-1]].append(draw(hostile_values))
        else:
            parent[path[-1]] = draw(hostile_values)
    return data


def _agrees(given: Any, read: Any) -> bool:
    """Everything the file says, the graph says too (keys the file leaves out take defaults)."""
    if isinstance(given, dict):
        return isinstance(read, dict) and all(k not in read or _agrees(v, read[k]) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(read, list) and len(given) == len(read) and all(_agrees(a, b) for a, b in zip(given, read))
    if isinstance(given, float) and math.isnan(given):
        return False
    return type(given) is type(read) and given == read


@FAST
@given(graph_files())
def test_valid_graph_files_read_back_exactly_and_render(data: dict[str, Any]) -> None:
    g = Graph.from_dict(data)
    assert g.to_dict() == data
    assert Graph.from_json(json.dumps(data)) == g
    g.to_dot()


@FAST
@given(mutated_graph_files())
def test_mutated_graph_files_are_rejected_or_read_as_they_are(data: dict[str, Any]) -> None:
    try:
        g = Graph.from_dict(data)
    except LensError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(("invalid autograd_lens graph: ", "not an autograd_lens graph"))
        return
    read = g.to_dict()
    assert _agrees(data, read), (data, read)
    n = len(g.nodes)
    assert all(0 <= a < n and 0 <= b < n for a, b in g.edges)
    assert all(o.node is None or 0 <= o.node < n for o in g.outputs)
    g.to_dot()


@FAST
@given(st.one_of(mutated_graph_files().map(json.dumps), st.text(max_size=60), st.binary(max_size=60)))
def test_lens_draw_never_shows_a_traceback(tmp_path_factory: pytest.TempPathFactory, content: str | bytes) -> None:
    tmp = tmp_path_factory.mktemp("draw")
    result = draw(tmp, content)
    if result.exit_code == exit_codes.OK:
        assert (tmp / "g.dot").is_file()
    else:
        assert_one_line_usage_error(result)

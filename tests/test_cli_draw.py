"""``lens`` command line: version, help, ``lens draw`` and its errors."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import autograd_lens as lens
from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main


@pytest.fixture
def graph_json(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    loss = net(torch.randn(2, 3)).mean()
    return lens.draw(loss).save(tmp_path / "g.json")


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == exit_codes.OK
    assert result.output == f"lens, version {lens.__version__}\n"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_commands_and_exit_codes(flag: str) -> None:
    result = CliRunner().invoke(main, [flag])
    assert result.exit_code == exit_codes.OK
    assert "draw" in result.output
    assert exit_codes.HELP in result.output and "3 findings, 64 usage or input error" in result.output


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_draw_svg(graph_json: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "g.svg"
    result = CliRunner().invoke(main, ["draw", str(graph_json), "-o", str(out)])
    assert result.exit_code == exit_codes.OK, result.output
    assert "net.0.weight" in out.read_text()
    ET.fromstring(out.read_text())


def test_draw_dot_with_options(graph_json: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.dot"
    args = ["draw", str(graph_json), "-o", str(out), "--collapse", "module", "--depth", "1", "--no-saved"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == exit_codes.OK, result.output
    text = out.read_text()
    assert "modules at depth 1" in text
    assert "<B>net</B>" in text


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "does not exist"), ("{not json", "is not valid JSON"), ('{"schema": "other"}', "not an autograd_lens graph")],
)
def test_draw_bad_input(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "g.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(main, ["draw", str(path), "-o", str(tmp_path / "g.svg")])
    assert result.exit_code == exit_codes.USAGE
    assert result.stderr.startswith("lens: error: ")
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_draw_unknown_extension(graph_json: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["draw", str(graph_json), "-o", str(tmp_path / "g.bmp")])
    assert result.exit_code == exit_codes.USAGE
    assert "lens: error:" in result.stderr and ".svg" in result.stderr


def test_draw_bad_option(graph_json: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["draw", str(graph_json), "-o", "g.svg", "--collapse", "sideways"])
    assert result.exit_code == exit_codes.USAGE

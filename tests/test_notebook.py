"""Notebooks: a notebook run by a real kernel (nbclient + ipykernel) that draws a graph inline,
shows a report, and runs a training loop under ``%%lens``; sites read as cells."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (scripts/setup.sh installs it)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (scripts/setup.sh installs it)")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (scripts/setup.sh installs it)")

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")

SETUP = """\
import torch
from torch import nn
import autograd_lens as lens
%load_ext autograd_lens
torch.manual_seed(0)
netG = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
netD = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
optG = torch.optim.SGD(netG.parameters(), lr=0.1)
optD = torch.optim.SGD(netD.parameters(), lr=0.1)
crit = nn.BCEWithLogitsLoss()"""

LOOP = """\
%%lens
for _ in range(3):
    fake = netG(torch.randn(5, 4))
    optD.zero_grad()
    errD = crit(netD(fake), torch.zeros(5, 1))
    errD.backward(retain_graph=True)
    optD.step()
    errG = crit(netD(fake), torch.ones(5, 1))
    errG.backward()
    optG.step()"""

DRAW = """\
g = lens.draw(errG)
g"""

WATCH = """\
with lens.watch() as w:
    loss = netD(netG(torch.randn(2, 4))).sum()
    loss.backward()
    optG.step()
w.report"""

BAD_OPTION = """\
%%lens --sideways
x = 1"""


def _line(cell: str, text: str) -> int:
    return next(i for i, line in enumerate(cell.splitlines(), 1) if line.strip().startswith(text))


def _html(cell: Any) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


@pytest.fixture(scope="module")
def executed() -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (SETUP, LOOP, DRAW, WATCH, BAD_OPTION)]
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False)
    try:
        client.execute()
    except Exception as exc:  # a kernel that cannot start is the only reason to skip
        if type(exc).__name__ in ("NoSuchKernel", "DeadKernelError"):
            pytest.skip(f"no Jupyter kernel could start: {exc}")
        raise
    return nb


@needs_dot
def test_lens_cell_magic_shows_the_report_with_cell_sites(executed: Any) -> None:
    cell = executed.cells[1]
    assert not [o for o in cell.outputs if o.output_type == "error"]
    html = _html(cell)
    assert html.startswith('<div class="lens-report"')
    step = _line(LOOP, "optG.step()")
    backward = _line(LOOP, "errD.backward(")
    assert "error[stray-grad]: `optG.step()` applied gradient that came from `errD.backward(retain_graph=True)`" in html
    assert f"--&gt; Cell In[{cell.execution_count}], line {step}" in html
    assert f"{backward} |     errD.backward(retain_graph=True)" in html.replace("&#x27;", "'")
    assert "gradient flow: which networks each backward reaches" in html
    assert f"Cell In[{cell.execution_count}], line {backward}" in html  # tables and graph headings too
    assert html.count("<svg") >= 2  # one graph per backward site, inline
    assert "stepped by `optG.step()`" in html


@needs_dot
def test_graph_shows_inline(executed: Any) -> None:
    cell = executed.cells[2]
    result = next(o for o in cell.outputs if o.output_type == "execute_result")
    assert result.data["text/plain"].startswith("<autograd_lens.Graph: ")
    html = result.data["text/html"]
    assert "<svg" in html and "netD.0.weight" in html
    assert re.search(r"fake: netG → netD", html)  # marked by draw() itself


def test_report_shows_as_html(executed: Any) -> None:
    cell = executed.cells[3]
    result = next(o for o in cell.outputs if o.output_type == "execute_result")
    html = result.data["text/html"]
    assert "Report(" not in html and html.startswith('<div class="lens-report"')
    assert "No findings." in html  # one loss, one optimizer that steps it: nothing wrong
    assert "gradient flow: which networks each backward reaches" in html
    # the tables name the cell and its lines, as IPython's own tracebacks do
    assert f"Cell In[{cell.execution_count}], line {_line(WATCH, 'loss.backward()')}" in html
    assert f"Cell In[{cell.execution_count}], line {_line(WATCH, 'optG.step()')}" in html


def test_a_bad_option_is_one_line(executed: Any) -> None:
    cell = executed.cells[4]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    assert text == "lens: error: %%lens: unknown option '--sideways'; use --no-graphs, --select RULE,..., --ignore RULE,...\n"
    assert not [o for o in cell.outputs if o.output_type in ("error", "display_data")]

"""``report.html``: written by ``lens trace`` and by ``lens report``, one self-contained file, and
used in a real browser (headless Chromium driven by selenium): selecting a finding highlights its
nodes in its graph and brings them into view; graphs pan and zoom; folded parts open on click."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import autograd_lens as lens
from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main
from autograd_lens.render.html import load_report, report_page

import graph_models as gm

ROOT = Path(__file__).resolve().parent.parent
GAN = ROOT / "examples" / "gan_no_detach.py"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lens trace examples/gan_no_detach.py`` in-process; the output folder."""
    folder = tmp_path_factory.mktemp("trace")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(main, ["trace", "--out", "out", str(GAN)])
    finally:
        os.chdir(cwd)
    assert result.exit_code == exit_codes.FINDINGS, result.output
    return folder / "out"


@needs_dot
def test_trace_writes_a_self_contained_page(traced: Path) -> None:
    page = (traced / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # nothing fetched: no external script, style sheet, image or font
    assert not re.search(r"<script[^>]+src=|<link\b|@import|<img\b|url\(\s*['\"]?https?:", page)
    assert not re.search(r"(?:src|href)=\"https?:", page)
    # findings in the rustc form, the tables, and the three graphs inline
    assert "error[stray-grad]: `optimizerG.step()` applied gradient" in page
    assert "help: detach `fake`" in page
    assert "gradient flow: which networks each backward reaches" in page
    assert "optimizer steps: where their gradients came from" in page
    assert page.count('<section class="graph"') == 3 and page.count("<svg") == 3
    # the premise of the graph of errD_fake: the optimizer it is for, the rule and the step line
    report = json.loads((traced / "report.json").read_text())
    entry = next(g for g in report["graphs"] if g["key"].endswith(":65"))
    title = json.loads((traced / entry["json"]).read_text())["title"]
    assert "the backward for `optimizerD`" in title
    assert "error[stray-grad] at line 72: `optimizerG.step()` took this gradient" in title
    stray = json.loads((traced / entry["json"]).read_text())["highlights"]
    assert {"tag": "stray", "label": "stepped by `optimizerG.step()` (line 72)"}.items() <= {
        k: v for k, v in next(h for h in stray if h["tag"] == "stray").items() if k in ("tag", "label")
    }.items()


@needs_dot
def test_lens_report_makes_the_same_page_from_the_saved_report(
    traced: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(traced.parent)  # where the trace ran: paths are shown relative to it
    out = tmp_path / "again.html"
    result = CliRunner().invoke(main, ["report", str(traced / "report.json"), "-o", str(out)])
    assert result.exit_code == exit_codes.OK, result.output
    assert result.output == f"wrote {out}\n"
    def strip(text: str) -> str:  # each page numbers its ids with its own token
        return re.sub(r"\br\d+(?=[gf\"-])", "r", text)

    assert strip(out.read_text()) == strip((traced / "report.html").read_text())
    report, graphs = load_report(traced / "report.json")
    assert len(report.findings) == 3 and len(graphs) == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ('{"schema": "autograd_lens.graph/1"}', "not an autograd_lens report"),
        ('{"schema": "autograd_lens.report/1", "findings": [{"rule": 1}]}', "malformed autograd_lens report"),
        (b"\xff\xfe\x00", "is not text"),
    ],
)
def test_lens_report_bad_input(tmp_path: Path, content: str | bytes | None, expected: str) -> None:
    path = tmp_path / "saved.json"  # not report.json: the suite checks every report.json it finds
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = CliRunner().invoke(main, ["report", str(path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == exit_codes.USAGE
    assert result.stderr.startswith("lens: error: ") and expected in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the browser tests need Debian's chromium and chromium-driver (scripts/setup.sh installs them)")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("the browser tests need selenium (scripts/setup.sh installs it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    drv = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield drv
    finally:
        drv.quit()


BOX = "var r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom];"


def _inside(inner: list[float], outer: list[float]) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


@needs_dot
def test_selecting_a_finding_highlights_its_nodes_in_view(traced: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get((traced / "report.html").as_uri())
    findings = browser.find_elements(By.CSS_SELECTOR, "pre.finding")
    assert [f.text.split(":", 1)[0] for f in findings] == ["error[stray-grad]", "warning[detach-leak]", "warning[missing-zero-grad]"]
    stray = findings[0]
    marks = stray.get_attribute("data-marks").split()
    assert len(marks) == 5  # four netG parameters and the edge where fake enters netD
    assert not browser.find_elements(By.CSS_SELECTOR, ".lens-hl")
    stray.click()
    assert "selected" in stray.get_attribute("class")
    viewport = [0, 0, browser.execute_script("return innerWidth"), browser.execute_script("return innerHeight")]
    for mark in marks:
        el = browser.find_element(By.ID, mark)
        assert "lens-hl" in el.get_attribute("class")
        view = browser.execute_script("return arguments[0].closest('.view')", el)
        assert _inside(browser.execute_script(BOX, el), browser.execute_script(BOX, view)), mark
        assert _inside(browser.execute_script(BOX, el), viewport), mark
    # the highlighted parameter is the one the finding names
    first = browser.find_element(By.ID, marks[0])
    assert "netG.main" in first.text
    # selecting the next finding moves the highlight
    findings[1].click()
    leak = findings[1].get_attribute("data-marks").split()
    assert leak == [marks[-1]]
    assert {e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, ".lens-hl")} == set(leak)


@needs_dot
def test_graphs_pan_zoom_and_folds_open(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    outs, params = gm.rnn(60)
    graph = lens.draw(*outs, params=params)
    page = tmp_path / "rnn.html"
    page.write_text(report_page(lens.Report(), [({"key": "rnn.py:9"}, graph)]))
    browser.get(page.as_uri())
    svg = browser.find_element(By.CSS_SELECTOR, ".view svg")
    vb = lambda: [float(x) for x in svg.get_dom_attribute("viewBox").split()]  # noqa: E731
    full = vb()
    browser.find_element(By.CSS_SELECTOR, "[data-act=in]").click()
    assert vb()[2] == pytest.approx(full[2] * 0.8)
    ActionChains(browser).move_to_element(svg).click_and_hold().move_by_offset(60, 40).release().perform()
    moved = vb()
    assert moved[0] < full[0] + full[2] * 0.1 and moved[2] == pytest.approx(full[2] * 0.8)
    browser.execute_script(
        "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: 300, clientY: 300, bubbles: true}))",
        svg,
    )
    assert vb()[2] == pytest.approx(full[2] * 0.64)
    browser.find_element(By.CSS_SELECTOR, "[data-act=fit]").click()
    assert vb() == pytest.approx(full)
    # the folded block opens on click, and "back" returns
    fold = browser.find_element(By.CSS_SELECTOR, ".lens-fold")
    assert "×59" in fold.text
    boxes = len(browser.find_elements(By.CSS_SELECTOR, ".view .lens-node"))
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", fold.find_element(By.TAG_NAME, "text"))
    back = browser.find_element(By.CSS_SELECTOR, "[data-act=back]")
    assert back.is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, ".view .lens-node")) > boxes
    assert not browser.find_elements(By.CSS_SELECTOR, ".view .lens-fold")
    back.click()
    assert len(browser.find_elements(By.CSS_SELECTOR, ".view .lens-node")) == boxes
    assert not back.is_displayed()


@needs_dot
def test_page_without_graphviz_shows_graphs_as_text(
    traced: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autograd_lens.render import dot as dot_mod
    from autograd_lens.render.html import write_html

    monkeypatch.setattr(dot_mod.shutil, "which", lambda name: None)
    warnings: list[str] = []
    page = write_html(traced / "report.json", tmp_path / "r.html", warn=warnings.append).read_text()
    assert "<svg" not in page and page.count('class="nograph"') == 3
    assert "AddmmBackward0" in page and "error[stray-grad]" in page  # the tree and the findings
    assert warnings == [warnings[0]] and warnings[0].startswith("3 graphs shown as text in the HTML report: ")


LSTM_SCRIPT = '''\
import torch
from torch import nn

torch.manual_seed(0)
cell1, cell2, head = nn.LSTMCell(8, 16), nn.LSTMCell(16, 16), nn.Linear(16, 8)
opt = torch.optim.SGD([*cell1.parameters(), *cell2.parameters(), *head.parameters()], lr=0.1)
for _ in range(2):
    h1 = c1 = h2 = c2 = torch.zeros(4, 16)
    for x in torch.randn(20, 4, 8):
        h1, c1 = cell1(x, (h1, c1))
        h2, c2 = cell2(h1, (h2, c2))
    loss = head(h2).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
'''


@needs_dot
def test_trace_of_an_unrolled_lstm_keeps_its_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lstm.py").write_text(LSTM_SCRIPT)
    result = CliRunner().invoke(main, ["trace", "--out", "out", "lstm.py"])
    assert result.exit_code == exit_codes.OK, result.output
    assert "json only" not in result.stderr and "did not finish" not in result.stderr
    [entry] = json.loads((tmp_path / "out" / "report.json").read_text())["graphs"]
    svg = (tmp_path / "out" / entry["svg"]).read_text()
    assert re.search(r"×1[89] step: cell1 → cell2", svg)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") >= 2  # the drawing, and the drawing with the fold open
    assert '<template data-open="fold:' in page

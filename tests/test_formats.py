"""What CI and editors read: ``--format sarif`` (SARIF 2.1.0) and ``--format github`` (workflow
annotations), and the fix under one name (``Finding.fix``, JSON ``fix``)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from autograd_lens import Finding, Label, Site, github, sarif
from autograd_lens.checks import RULES
from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main
from autograd_lens.report import Report

from test_runner import GAN, GAN_STEP_LINE, line_of


def trace(*args: str) -> Result:
    return CliRunner().invoke(main, ["trace", *args])


@pytest.fixture
def gan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "gan.py"
    path.write_text("print('the script speaks')\n" + GAN)
    return path


def test_sarif_on_stdout_with_rules_results_locations_and_fixes(gan: Path) -> None:
    result = trace("--format", "sarif", "--no-graphs", "src/gan.py")
    assert result.exit_code == exit_codes.FINDINGS, result.output
    assert "the script speaks" in result.stderr  # stdout is only the SARIF
    log = json.loads(result.stdout)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "autograd_lens"
    rules = driver["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    stray_rule = rules[list(RULES).index("stray-grad")]
    page = RULES["stray-grad"]
    assert stray_rule["shortDescription"]["text"] == page.summary
    assert stray_rule["fullDescription"]["text"] == page.section("What it does")
    assert stray_rule["help"]["markdown"] == page.doc.strip() and "## Use instead" in stray_rule["help"]["markdown"]
    assert stray_rule["defaultConfiguration"]["level"] == "error" and stray_rule["name"] == "StrayGrad"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == gan.parent.parent.as_uri() + "/"

    results = {r["ruleId"]: r for r in run["results"]}
    stray = results["stray-grad"]
    assert rules[stray["ruleIndex"]]["id"] == "stray-grad" and stray["level"] == "error"
    location = stray["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "src/gan.py", "uriBaseId": "%SRCROOT%"}
    assert location["region"] == {"startLine": GAN_STEP_LINE + 1}  # the print line comes first
    text = stray["message"]["text"]
    assert text.startswith("`optimizerG.step()` applied gradient that came from")
    assert "\nhelp: detach `fake` in the loss for `optimizerD`: `netD(fake.detach())`" in text
    assert stray["properties"]["fix"].startswith("detach `fake`")
    related = stray["relatedLocations"]
    assert [r["id"] for r in related] == list(range(len(related)))
    assert any(r["message"]["text"] == "`fake` enters `netD` without `.detach()`" for r in related)
    assert results["detach-leak"]["level"] == "warning"
    assert run["invocations"][0]["executionSuccessful"] is True


def test_sarif_file_outside_the_working_directory_is_an_absolute_uri(tmp_path: Path) -> None:
    site = Site("/elsewhere/a b.py", 3, "f")
    log = sarif.to_sarif(Report(findings=(Finding("stray-grad", "error", "m", site),)))
    loc = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "file:///elsewhere/a%20b.py"}


def test_github_annotations_on_stdout(gan: Path) -> None:
    result = trace("--format", "github", "--no-graphs", "src/gan.py")
    assert result.exit_code == exit_codes.FINDINGS
    lines = result.stdout.splitlines()
    assert all(line.startswith(("::error ", "::warning ")) for line in lines), result.stdout
    stray = next(line for line in lines if "stray-grad" in line)
    assert stray.startswith(f"::error file=src/gan.py,line={GAN_STEP_LINE + 1},title=autograd_lens stray-grad::")
    assert "%0Ahelp: detach `fake` in the loss for `optimizerD`%3A" not in stray  # ':' is kept in the message
    assert "%0Ahelp: detach `fake` in the loss for `optimizerD`: `netD(fake.detach())`" in stray
    leak = next(line for line in lines if "detach-leak" in line)
    assert leak.startswith(f"::warning file=src/gan.py,line={line_of('errD_fake = ') + 1},")
    assert "error[stray-grad]" in result.stderr  # the text report still goes to the log


def test_github_escapes_what_could_break_the_command() -> None:
    hostile = Finding(
        "stray-grad", "error", "100% wrong\r\n::error::injected", Site("/x/we,ird:name.py", 7),
        notes=("a, b: c",), fix="use `a%b`",
    )
    line = github.annotation(hostile)
    assert "\n" not in line and "\r" not in line  # one command, on one line
    _, command, message = line.split("::", 2)
    assert command == "error file=/x/we%2Cird%3Aname.py,line=7,title=autograd_lens stray-grad"
    assert message == "100%25 wrong%0D%0A::error::injected%0Anote: a, b: c%0Ahelp: use `a%25b`"
    unescaped = message.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
    assert unescaped == sarif.result_text(hostile)
    assert github.escape_data("%0A") == "%250A"


def test_the_fix_has_one_name() -> None:
    f = Finding("stray-grad", "error", "m", None, fix="do this")
    assert f.fix == "do this" and f.to_dict()["fix"] == "do this"
    assert "help" not in {fl.name for fl in dataclasses.fields(Finding)}
    assert "help: do this" in f.text()


def test_json_format_stays_the_report(gan: Path) -> None:
    result = trace("--format", "json", "--no-graphs", "src/gan.py")
    data = json.loads(result.stdout)
    assert data["status"] == "findings" and data["findings"][0]["fix"]
    assert re.fullmatch(r"src/gan\.py", data["findings"][0]["site"]["file"])


def test_sarif_and_github_of_an_empty_report() -> None:
    assert sarif.to_sarif(Report())["runs"][0]["results"] == []
    assert github.annotations(Report()) == ""
    with_label = Finding(
        "detach-leak", "warning", "m", Site("a.py", 1), labels=(Label(Site("a.py", 1), "here", primary=True),)
    )
    assert "relatedLocations" not in sarif.to_sarif(Report(findings=(with_label,)))["runs"][0]["results"][0]

"""Tests of the pytest plugin, run through pytest's own ``pytester``."""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["pytester"]


def lit(text: str) -> str:
    """``text`` as a literal ``fnmatch`` pattern (brackets are character classes there)."""
    return re.sub(r"([\[\]])", r"[\1]", text)


GAN_TESTS = '''
import pytest
import torch
import torch.nn as nn


def gan_step(fixed):
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh())
    netD = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
    netD.zero_grad()
    fake = netG(torch.randn(16, 4))
    errD = criterion(netD(fake.detach() if fixed else fake), zeros)
    errD.backward(retain_graph=not fixed)
    optimizerD.step()
    if fixed:
        netG.zero_grad()
    errG = criterion(netD(fake), ones)
    errG.backward()
    optimizerG.step()


def test_forgets_detach():
    gan_step(fixed=False)


def test_fixed_twin():
    gan_step(fixed=True)
'''


@pytest.fixture(scope="module", autouse=True)
def warm_imports() -> None:
    """Run the GAN step once here, under the lens, before any in-process pytest run.

    The first ``optimizer.step()`` imports hundreds of torch modules lazily. ``pytester`` removes
    the modules an in-process run imported when the run ends, and torch cannot import some of
    them twice; importing them out here first keeps every in-process run on the same modules.
    """
    import autograd_lens as lens

    namespace: dict[str, object] = {}
    exec(compile(GAN_TESTS, "<gan>", "exec"), namespace)
    for fixed in (False, True):
        with lens.watch():
            namespace["gan_step"](fixed)  # type: ignore[operator]


@pytest.fixture
def gan_file(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_gan=GAN_TESTS)
    return pytester


def test_lens_fails_the_buggy_step_with_the_finding(gan_file: pytest.Pytester) -> None:
    result = gan_file.runpytest_inprocess("--lens")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "autograd_lens 0.1.0: --lens on, fail on error",
            "*_ test_forgets_detach _*",
            "autograd_lens found 1 finding at or above 'error' in this test:",
            lit("error[stray-grad]: `optimizerG.step()` applied gradient that came from `errD.backward(") + "*",
            "*`fake` enters `netD` without `.detach()`",
            "help: detach `fake` in the loss for `optimizerD`: `netD(fake.detach())`*",
            "*= autograd_lens =*",
            lit("test_gan.py::test_forgets_detach  error[stray-grad]  test_gan.py:") + "*",
            lit("test_gan.py::test_forgets_detach  warning[detach-leak]  test_gan.py:") + "*",
            "1 error, 1 warning in 1 test",
            "FAILED test_gan.py::test_forgets_detach - Failed: autograd_lens found 1 find*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_fixed_twin*error*")


def test_without_lens_nothing_fails(gan_file: pytest.Pytester) -> None:
    result = gan_file.runpytest_inprocess()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["autograd_lens 0.1.0: --lens off*"])
    result.stdout.no_fnmatch_line("*= autograd_lens =*")


def test_fail_on_warning_is_stricter(gan_file: pytest.Pytester) -> None:
    gan_file.makepyfile(
        test_warn='''
import torch, torch.nn as nn

def test_only_a_warning():
    netG, netD = nn.Linear(2, 2), nn.Linear(2, 1)
    optimizerD = torch.optim.SGD(netD.parameters(), lr=0.1)
    fake = netG(torch.randn(3, 2))
    netD(fake).sum().backward()   # leaks into netG, which nobody steps
    optimizerD.step()
'''
    )
    result = gan_file.runpytest_inprocess("--lens", "test_warn.py")
    result.assert_outcomes(passed=1)
    result = gan_file.runpytest_inprocess("--lens", "--lens-fail-on", "warning", "test_warn.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["autograd_lens 0.1.0: --lens on, fail on warning", "*at or above 'warning'*"])


def test_plugin_can_be_disabled(gan_file: pytest.Pytester) -> None:
    result = gan_file.runpytest_inprocess("-p", "no:autograd_lens")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*autograd_lens 0.1.0*")
    result = gan_file.runpytest_inprocess("-p", "no:autograd_lens", "--lens")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --lens*"])


def test_lens_fixture_exposes_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gan=GAN_TESTS)
    pytester.makepyfile(
        test_fixture='''
from test_gan import gan_step

def test_report(lens):
    gan_step(fixed=False)
    rules = sorted(f.rule for f in lens.report.findings)
    assert rules == ["detach-leak", "stray-grad"]
    assert lens.report.errors[0].optimizer == "optimizerG"

def test_clean(lens):
    gan_step(fixed=True)
    assert lens.report.findings == ()
    assert len(lens.report.backwards) == 2
'''
    )
    result = pytester.runpytest_inprocess("test_fixture.py")
    result.assert_outcomes(passed=2)


def test_a_failing_test_with_the_fixture_shows_its_own_failure_under_lens(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gan=GAN_TESTS)
    pytester.makepyfile(
        test_own_failure='''
from test_gan import gan_step

def test_fails_for_its_own_reason(lens):
    gan_step(fixed=False)
    assert 1 + 1 == 3, "the test's own assertion"
'''
    )
    result = pytester.runpytest_inprocess("--lens", "test_own_failure.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the test's own assertion*"])
    result.stdout.no_fnmatch_line("*Failed: autograd_lens found*")


def test_marker_ignores_rules_and_rejects_unknown_ones(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gan=GAN_TESTS)
    pytester.makepyfile(
        test_marked='''
import pytest
from test_gan import gan_step

@pytest.mark.lens(ignore=["stray-grad"])
def test_known_bug():
    gan_step(fixed=False)
'''
    )
    result = pytester.runpytest_inprocess("--lens", "--strict-markers", "test_marked.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([lit("test_marked.py::test_known_bug  warning[detach-leak]") + "*"])
    result.stdout.no_fnmatch_line("*stray-grad*")
    pytester.makepyfile(
        test_typo='''
import pytest

@pytest.mark.lens(ignore=["stray-grads"])
def test_typo():
    pass
'''
    )
    result = pytester.runpytest_inprocess("--lens", "test_typo.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*" + lit("test_typo.py::test_typo: unknown rule 'stray-grads' in @pytest.mark.lens(ignore=...); known rules:") + "*"]
    )


def test_bad_options_are_usage_errors(gan_file: pytest.Pytester) -> None:
    result = gan_file.runpytest_inprocess("--lens", "--lens-fail-on", "bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lens-fail-on takes one of error, warning; got 'bogus'*"])
    result = gan_file.runpytest_inprocess("--lens-fail-on", "warning")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lens-fail-on needs --lens*"])


def test_options_are_in_their_own_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(
        ["autograd_lens: find autograd bugs while tests run:", "  --lens *", "  --lens-fail-on=LEVEL*"]
    )
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines([lit("@pytest.mark.lens(ignore=[...]): ") + "*"])


def test_a_failing_test_shows_its_findings_as_a_section(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gan=GAN_TESTS)
    pytester.makepyfile(
        test_fails='''
from test_gan import gan_step

def test_breaks():
    gan_step(fixed=False)
    assert False, "the test's own failure"
'''
    )
    result = pytester.runpytest_inprocess("--lens", "test_fails.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: the test's own failure*", "*Captured autograd_lens call*", lit("error[stray-grad]") + "*"]
    )


def test_findings_an_assertion_already_judged_do_not_fail_under_lens(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gan=GAN_TESTS)
    pytester.makepyfile(
        test_expects='''
import autograd_lens as lens
from test_gan import gan_step

def test_expected_bug():
    with lens.expect("stray-grad", optimizer="optimizerG"):
        gan_step(fixed=False)
'''
    )
    result = pytester.runpytest_inprocess("--lens", "--lens-fail-on", "warning", "test_expects.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= autograd_lens =*", "no findings"])


def test_a_test_with_the_lens_fixture_is_not_failed_for_the_findings_it_asked_for(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gan=GAN_TESTS)
    pytester.makepyfile(
        test_asks='''
import autograd_lens as lens
from test_gan import gan_step

def test_fixture_expects_the_bug(lens):
    gan_step(fixed=False)
    assert [f.rule for f in lens.report.errors] == ["stray-grad"]

def test_expect_by_keyword():
    with lens.expect(rule="stray-grad", optimizer="optimizerG"):
        gan_step(fixed=False)
'''
    )
    result = pytester.runpytest_inprocess("--lens", "test_asks.py")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= autograd_lens =*", "no findings"])


def test_findings_reach_the_summary_under_xdist(gan_file: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result = gan_file.runpytest_inprocess("--lens", "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= autograd_lens =*",
            lit("test_gan.py::test_forgets_detach  error[stray-grad]  test_gan.py:") + "*",
            lit("test_gan.py::test_forgets_detach  warning[detach-leak]  test_gan.py:") + "*",
            "1 error, 1 warning in 1 test",
        ]
    )
    result.stdout.no_fnmatch_line("no findings")

"""pytest plugin: the ``lens`` fixture, the ``--lens`` option and the ``lens`` marker.

Registered through the ``pytest11`` entry point ``autograd_lens``; turn it off with
``-p no:autograd_lens``.

- ``lens`` fixture: the test body runs under :func:`autograd_lens.watch`; the fixture is the
  :class:`~autograd_lens.Watch`, so ``lens.report`` holds what the lens found so far. The test
  judges those findings itself: ``--lens`` does not fail it for them.
- ``--lens``: every test runs under the lens, and a test in which a finding at or above
  ``--lens-fail-on`` (``error`` by default, or ``warning``) occurred fails with the finding's text.
  Findings that the test asked for (inside ``expect(...)``, or through the ``lens`` fixture) are
  left to the test. With pytest-xdist (``-n 2``) the findings travel with each test's report to
  the controller, whose summary lists them.
- ``@pytest.mark.lens(ignore=["dead-param"])``: leave those rules out for one test.

Example::

    $ pytest --lens
    $ pytest --lens --lens-fail-on warning

    def test_step(lens):
        train_step()
        assert not lens.report.errors
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import __version__
from .checks import rules as known_rules
from .findings import SEVERITIES, Finding, rel_path, severity_rank

if TYPE_CHECKING:
    from .watch import Watch

# The lens itself (torch, the watch, the assertions) is imported when a test uses it: a project
# that has autograd_lens installed does not pay for it in test runs that do not.

GROUP = "autograd_lens"
#: Attribute of a test's call report that carries its findings (plain JSON data, so that
#: pytest-xdist sends it from the worker to the controller with the report).
REPORT_ATTR = "autograd_lens_findings"
_FINDINGS_KEY = pytest.StashKey[list[tuple[str, dict[str, Any]]]]()
_ITEM_FINDINGS_KEY = pytest.StashKey[list[dict[str, Any]]]()
_IGNORE_KEY = pytest.StashKey[tuple[str, ...]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "autograd_lens: find autograd bugs while tests run")
    group.addoption(
        "--lens",
        action="store_true",
        default=False,
        help="run every test under autograd_lens.watch() and fail tests in which the lens finds an error",
    )
    group.addoption(
        "--lens-fail-on",
        action="store",
        default=None,
        metavar="LEVEL",
        help="with --lens: the least severe finding that fails a test, 'error' (default) or 'warning'",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lens(ignore=[...]): rule ids (e.g. 'dead-param') that --lens does not fail this test on",
    )
    level = config.getoption("lens_fail_on")
    if level is not None:
        if level not in SEVERITIES:
            raise pytest.UsageError(
                f"--lens-fail-on takes one of {', '.join(SEVERITIES)}; got {level!r}"
            )
        if not config.getoption("lens"):
            raise pytest.UsageError("--lens-fail-on needs --lens (it says which findings fail a test under --lens)")
    config.stash[_FINDINGS_KEY] = []
    if not config.pluginmanager.has_plugin("autograd_lens-collector"):
        config.pluginmanager.register(_Collector(config), "autograd_lens-collector")


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("lens", False))


def _fail_on(config: pytest.Config) -> str:
    return config.getoption("lens_fail_on") or "error"


def pytest_report_header(config: pytest.Config) -> str:
    if _enabled(config):
        return f"autograd_lens {__version__}: --lens on, fail on {_fail_on(config)}"
    return f"autograd_lens {__version__}: --lens off (the `lens` fixture and marker are available)"


def _marker_ignore(item: pytest.Item) -> tuple[str, ...]:
    """Rule ids from the ``lens`` markers of ``item``; unknown ids are a usage error."""
    out: list[str] = []
    for mark in item.iter_markers("lens"):
        unknown_kw = sorted(set(mark.kwargs) - {"ignore"})
        if mark.args or unknown_kw:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.lens takes only ignore=[rule ids]; got "
                f"{', '.join([repr(a) for a in mark.args] + unknown_kw)}"
            )
        rules = mark.kwargs.get("ignore", ())
        if isinstance(rules, str):
            rules = (rules,)
        for r in rules:
            if r not in known_rules():
                raise pytest.UsageError(
                    f"{item.nodeid}: unknown rule {r!r} in @pytest.mark.lens(ignore=...); "
                    f"known rules: {', '.join(known_rules())}"
                )
            out.append(r)
    return tuple(out)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.stash[_IGNORE_KEY] = _marker_ignore(item)


@pytest.fixture
def lens() -> Iterator[Watch]:
    """The test body runs under :func:`autograd_lens.watch`; this is its ``Watch``.

    Example::

        def test_step(lens):
            train_step()
            assert lens.report.by_rule("stray-grad") == []
    """
    from .watch import Watch

    with Watch({}, {}, {}) as w:
        yield w


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    if not _enabled(item.config):
        return (yield)
    from . import testing
    from .watch import watch

    testing.reset_claims()

    if getattr(item, "funcargs", {}).get("lens") is not None:
        # the test has the lens fixture: it asked for the findings and judges them itself
        return (yield)
    w = watch()
    w.__enter__()
    try:
        result = yield
    except BaseException as exc:
        w.__exit__(type(exc), exc, exc.__traceback__)
        _judge(item, w.report, passed=False)
        raise
    w.__exit__(None, None, None)
    _judge(item, w.report, passed=True)
    return result


def _judge(item: pytest.Item, report: Any, *, passed: bool) -> None:
    """Record the test's findings; fail a passing test on findings at or above --lens-fail-on."""
    from .testing import claimed, findings_text

    ignore = item.stash.get(_IGNORE_KEY, ())
    kept = [f for f in report.findings if f.rule not in ignore and not claimed(f)]
    item.stash[_ITEM_FINDINGS_KEY] = [_summary_entry(f) for f in kept]
    if not kept:
        return
    limit = severity_rank(_fail_on(item.config))
    bad = [f for f in kept if severity_rank(f.severity) <= limit]
    if passed and bad:
        pytest.fail(
            f"autograd_lens found {len(bad)} finding{'s' if len(bad) != 1 else ''} at or above "
            f"'{_fail_on(item.config)}' in this test:\n\n{findings_text(bad)}",
            pytrace=False,
        )
    item.add_report_section("call", "autograd_lens", findings_text(kept))


def _summary_entry(f: Finding) -> dict[str, Any]:
    """What the terminal summary needs of a finding, as JSON data."""
    return {
        "rule": f.rule,
        "severity": f.severity,
        "site": f"{rel_path(f.site.file)}:{f.site.line}" if f.site else "?",
        "count": f.count,
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if call.when == "call":
        found = item.stash.get(_ITEM_FINDINGS_KEY, None)
        if found:
            setattr(report, REPORT_ATTR, found)
    return report


class _Collector:
    """Collects the findings of each test from its report: in the process that runs the tests,
    and in pytest-xdist's controller, which gets the reports of its workers."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        found = getattr(report, REPORT_ATTR, None)
        if found and report.when == "call":
            self.config.stash[_FINDINGS_KEY].extend((report.nodeid, dict(f)) for f in found)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _enabled(config):
        return
    found = config.stash.get(_FINDINGS_KEY, [])
    terminalreporter.section("autograd_lens")
    if not found:
        terminalreporter.write_line("no findings")
        return
    for nodeid, f in found:
        times = f" (x{f['count']})" if f["count"] > 1 else ""
        terminalreporter.write_line(f"{nodeid}  {f['severity']}[{f['rule']}]  {f['site']}{times}")
    n_err = sum(1 for _, f in found if f["severity"] == "error")
    terminalreporter.write_line(
        f"{n_err} error{'s' if n_err != 1 else ''}, {len(found) - n_err} warning"
        f"{'s' if len(found) - n_err != 1 else ''} in {len({n for n, _ in found})} test"
        f"{'s' if len({n for n, _ in found}) != 1 else ''}"
    )

"""The rule catalog: stable ids, severities, and a complete page of text for every rule."""

from __future__ import annotations

import pytest

from autograd_lens.checks import RULES, SECTIONS, get_rule
from autograd_lens.errors import LensError

# the ids and severities the JSON report and users' tests rely on
CATALOG = {
    "second-backward": "error",
    "inplace-saved": "error",
    "stray-grad": "error",
    "detach-leak": "warning",
    "missing-zero-grad": "warning",
    "dead-param": "warning",
    "retained-graph": "warning",
    "nonscalar-backward": "error",
    "no-grad-path": "error",
    "nonleaf-grad": "warning",
    "ctx-tensor": "warning",
}


def test_catalog_ids_and_severities_are_stable() -> None:
    assert {r.id: r.severity for r in RULES.values()} == CATALOG


def test_catalog_read_from_source_is_what_the_check_modules_say() -> None:
    """The catalog reads the rule modules' source (no torch for `lens rules`); what it read is what
    the modules hold when they run."""
    import importlib

    for r in RULES.values():
        m = importlib.import_module(f"autograd_lens.checks.{r.id.replace('-', '_')}")
        assert (m.RULE, m.SEVERITY, m.SUMMARY, m.__doc__) == (r.id, r.severity, r.summary, r.doc)


@pytest.mark.parametrize("rule_id", sorted(CATALOG))
def test_every_rule_page_has_every_section(rule_id: str) -> None:
    rule = get_rule(rule_id)
    assert rule.summary and rule.title
    for title in SECTIONS:
        text = rule.section(title)
        assert len(text) > 20, f"{rule_id}: section {title!r} is missing or empty"
    assert "```python" in rule.section("Example")
    assert "```python" in rule.section("Use instead") or "`" in rule.section("Use instead")


def test_unknown_rule_is_a_lens_error_listing_the_known_ones() -> None:
    with pytest.raises(LensError, match="unknown rule 'bogus'.*stray-grad"):
        get_rule("bogus")

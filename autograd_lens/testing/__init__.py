"""Assertions about autograd for a project's own test suite.

Each assertion raises a plain :class:`AssertionError` whose message reads on its own in
``pytest -q`` output: what was expected, what the graph or the lens saw, and the fix. Bad input
(for example a non-tensor output) raises :class:`autograd_lens.LensError` instead.

- :func:`assert_reaches` / :func:`assert_does_not_reach`: answered from the graph alone; no
  backward runs and no ``.grad`` is touched.
- :func:`assert_no_findings`, :func:`expect_clean`, :func:`expect`: run code under
  :func:`autograd_lens.watch` and check what it found.
- :func:`assert_grads_only_for`: every gradient an optimizer stepped came from a backward meant
  for it (no ``stray-grad``).
- :func:`assert_gradcheck`: ``torch.autograd.gradcheck`` for custom ``autograd.Function``\\ s,
  with a failure that names the input, the element and both values.

One module per concern: :mod:`.graphs` (from the graph alone), :mod:`.runtime` (the lens at run
time), :mod:`.gradcheck`; :mod:`.common` holds what they share.

Example::

    from autograd_lens.testing import assert_does_not_reach

    def test_discriminator_loss_stops_at_generator():
        fake = netG(noise)
        errD = criterion(netD(fake.detach()), zeros)
        assert_does_not_reach(errD, netG)
"""

from __future__ import annotations

from .common import claimed, reset_claims
from .gradcheck import assert_gradcheck
from .graphs import assert_does_not_reach, assert_reaches
from .runtime import (
    assert_grads_only_for,
    assert_no_findings,
    expect,
    expect_clean,
    failing,
    findings_text,
    known_rules,
)

__all__ = [
    "assert_does_not_reach",
    "assert_gradcheck",
    "assert_grads_only_for",
    "assert_no_findings",
    "assert_reaches",
    "claimed",
    "expect",
    "expect_clean",
    "failing",
    "findings_text",
    "known_rules",
    "reset_claims",
]

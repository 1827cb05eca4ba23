"""flowtap's pytest plugin (the ``pytest11`` entry point): the ``flowtap_capture`` fixture.

pytest loads every ``pytest11`` entry point at the start of every run in the environment,
whatever is tested. This module is therefore kept apart from the ``flowtap`` package,
whose import costs tens of milliseconds: it imports flowtap only when a test asks for the
fixture. The helpers themselves are in :mod:`flowtap.testing`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flowtap.testing import CaptureHarness


@pytest.fixture
def flowtap_capture() -> Iterator[Callable[..., CaptureHarness]]:
    """Factory fixture: ``flowtap_capture(*plugins, config=...)`` returns a started harness
    (:func:`flowtap.testing.capture`); every capture it started is stopped after the test."""
    from flowtap.testing import capture

    with contextlib.ExitStack() as stack:

        def start(*plugins: object, **kwargs: Any) -> CaptureHarness:
            return stack.enter_context(capture(*plugins, **kwargs))

        yield start

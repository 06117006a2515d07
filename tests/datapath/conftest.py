from collections.abc import Iterator

import pytest

from .harness import Harness, new_harness


@pytest.fixture(scope="session")
def harness_session() -> Iterator[Harness]:
    h = new_harness("main")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def dp(harness_session: Harness) -> Harness:
    harness_session.reset()
    return harness_session

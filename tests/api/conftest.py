import os

import pytest

from tests.conformance.runner import ConformanceLab


@pytest.fixture(scope="module")
def api_lab():
    """The nine upstream pods on one lab node, with the daemon and its API."""
    lab = ConformanceLab(prefix=f"ena{os.getpid()}")
    try:
        lab.start()
        yield lab
    finally:
        lab.close()

"""Upstream NetworkPolicy e2e cases against the real daemon in the lab:
every TCP and UDP case on the wire, SCTP at packet level."""

from __future__ import annotations

import os

import pytest

from . import cases as C
from .runner import ConformanceLab, run_case

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", params=[4, 6], ids=["ipv4", "ipv6"])
def conformance_lab(request):
    lab = ConformanceLab(prefix=f"enc{request.param}{os.getpid()}", family=request.param)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("case", C.CASES, ids=[c.id for c in C.CASES])
def test_upstream_case(conformance_lab, case):
    run_case(conformance_lab, case)

"""HZ for the datapath clock: measured by each process, unless the
environment gives it (the test suite measures it once for all its daemons)."""

from __future__ import annotations

import pytest

from enforcer.datapath import loader
from enforcer.errors import ConfigError


@pytest.fixture
def fresh_cache():
    loader.kernel_hz.cache_clear()
    yield
    loader.kernel_hz.cache_clear()


def test_the_environment_gives_hz_without_measuring(monkeypatch, fresh_cache):
    monkeypatch.setenv(loader.KERNEL_HZ_ENV, "300")
    monkeypatch.setattr(loader, "measure_kernel_hz", lambda: pytest.fail("measured although given"))
    assert loader.kernel_hz() == 300


@pytest.mark.parametrize("bad", ["0", "42", "250Hz", "-250"])
def test_a_wrong_hz_in_the_environment_is_refused(monkeypatch, fresh_cache, bad):
    monkeypatch.setenv(loader.KERNEL_HZ_ENV, bad)
    with pytest.raises(ConfigError, match=loader.KERNEL_HZ_ENV):
        loader.kernel_hz()


def test_unset_it_is_measured(monkeypatch, fresh_cache):
    monkeypatch.delenv(loader.KERNEL_HZ_ENV, raising=False)
    measured = loader.measure_kernel_hz()
    assert measured in loader.STANDARD_HZ
    assert loader.kernel_hz() == measured

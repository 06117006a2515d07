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


def test_unset_the_kernel_configuration_gives_it(monkeypatch, fresh_cache):
    monkeypatch.delenv(loader.KERNEL_HZ_ENV, raising=False)
    monkeypatch.setattr(loader, "configured_kernel_hz", lambda: 1000)
    monkeypatch.setattr(loader, "measure_kernel_hz", lambda: pytest.fail("measured although configured"))
    assert loader.kernel_hz() == 1000


def test_without_a_configuration_it_is_measured(monkeypatch, fresh_cache):
    monkeypatch.delenv(loader.KERNEL_HZ_ENV, raising=False)
    monkeypatch.setattr(loader, "configured_kernel_hz", lambda: None)
    monkeypatch.setattr(loader, "measure_kernel_hz", lambda: 300)
    assert loader.kernel_hz() == 300


@pytest.mark.parametrize("files,expected", [
    ({"config.gz": "CONFIG_HZ_300=y\nCONFIG_HZ=300\n"}, 300),
    ({"config.gz": "# no HZ here\n", "config-R": "CONFIG_HZ=100\n"}, 100),  # the next file says
    ({"config-R": "CONFIG_HZ=250\n"}, 250),  # no gz: the distribution's file, named by release
    ({"config.gz": "CONFIG_HZ=1000\n", "config-R": "CONFIG_HZ=100\n"}, 1000),  # the kernel's own first
    ({"config-R": "CONFIG_HZ=42\n"}, None),  # not a standard HZ: measured instead
    ({"config.gz": b"not gzip"}, None),
    ({}, None),
])
def test_configured_hz(tmp_path, files, expected):
    import gzip
    import os
    for name, content in files.items():
        path = tmp_path / name.replace("-R", "-" + os.uname().release)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif name.endswith(".gz"):
            with gzip.open(path, "wt") as f:
                f.write(content)
        else:
            path.write_text(content)
    assert loader.configured_kernel_hz((str(tmp_path / "config.gz"), str(tmp_path / "config-{release}"))) == expected


def test_this_kernel_configuration_agrees_with_the_clock():
    """Where this machine's kernel says its HZ, the jiffies clock runs at it."""
    configured = loader.configured_kernel_hz()
    if configured is None:
        pytest.skip("no kernel configuration readable here")
    assert loader.measure_kernel_hz() == configured

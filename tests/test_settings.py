"""Settings read from the environment say what is wrong with a value, naming the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from tollgate.settings import env_address, env_float, env_int


def test_whole_numbers_are_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_X", "2048")
    assert env_int("TOLLGATE_X", 1) == 2048
    monkeypatch.setenv("TOLLGATE_X", "")
    assert env_int("TOLLGATE_X", 7) == 7
    monkeypatch.setenv("TOLLGATE_X", "1.5")
    with pytest.raises(ImproperlyConfigured, match="TOLLGATE_X must be a whole number"):
        env_int("TOLLGATE_X", 1)


def test_numbers_are_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_Y", "0.25")
    assert env_float("TOLLGATE_Y", 1.0) == 0.25
    monkeypatch.setenv("TOLLGATE_Y", "soon")
    with pytest.raises(ImproperlyConfigured, match="TOLLGATE_Y must be a number"):
        env_float("TOLLGATE_Y", 1.0)


def test_addresses_are_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLGATE_ADDR", raising=False)
    assert env_address("TOLLGATE_ADDR") is None
    monkeypatch.setenv("TOLLGATE_ADDR", "127.0.0.1:9100")
    assert env_address("TOLLGATE_ADDR") == ("127.0.0.1", 9100)
    monkeypatch.setenv("TOLLGATE_ADDR", "[::1]:9100")
    assert env_address("TOLLGATE_ADDR") == ("::1", 9100)
    for wrong in ("9100", "127.0.0.1", "127.0.0.1:http", ":9100", "127.0.0.1:70000"):
        monkeypatch.setenv("TOLLGATE_ADDR", wrong)
        with pytest.raises(ImproperlyConfigured, match="TOLLGATE_ADDR must be host:port"):
            env_address("TOLLGATE_ADDR")

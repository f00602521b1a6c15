"""ConnectionOptions.create: defaults, validation, the ping timeout cap, the shared cache; warn_once."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from tornado_websocket import options
from tornado_websocket.options import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUED_MESSAGES,
    DEFAULT_MAX_WRITE_BUFFER_SIZE,
    ConnectionOptions,
    warn_once,
    warn_unknown_compression_options,
)
from tornado_websocket.protocol import DEFAULT_MAX_MESSAGE_SIZE


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch):
    """Each test sees a process that has warned about nothing and cached no options."""
    monkeypatch.setattr(options.LOG, "_once", set())
    ConnectionOptions.create.cache_clear()
    yield
    ConnectionOptions.create.cache_clear()


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tornado.general" and r.levelno == logging.WARNING]


# -- defaults ------------------------------------------------------------------------------


def test_create_without_arguments_gives_the_documented_defaults():
    created = ConnectionOptions.create()
    assert created == ConnectionOptions()
    assert created.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 10 * 1024 * 1024
    assert created.ping_interval == 0.0
    assert created.ping_timeout == 0.0
    assert created.close_timeout == DEFAULT_CLOSE_TIMEOUT == 5.0
    assert created.max_write_buffer_size == DEFAULT_MAX_WRITE_BUFFER_SIZE == 16 * 1024 * 1024
    assert created.max_queued_messages == DEFAULT_MAX_QUEUED_MESSAGES == 32


def test_none_means_the_default_as_in_tornado_settings():
    created = ConnectionOptions.create(
        ping_interval=None, ping_timeout=None, close_timeout=None, max_queued_messages=None
    )
    assert created == ConnectionOptions()


def test_none_for_the_size_limits_means_no_limit():
    created = ConnectionOptions.create(max_message_size=None, max_write_buffer_size=None)
    assert created.max_message_size is None
    assert created.max_write_buffer_size is None


def test_values_are_converted_to_their_types():
    created = ConnectionOptions.create(ping_interval=2, ping_timeout=1, close_timeout=3, max_queued_messages=4.0)
    assert (created.ping_interval, created.ping_timeout, created.close_timeout) == (2.0, 1.0, 3.0)
    assert type(created.ping_interval) is float and type(created.close_timeout) is float
    assert created.max_queued_messages == 4 and type(created.max_queued_messages) is int


def test_the_ping_timeout_defaults_to_the_interval():
    assert ConnectionOptions.create(ping_interval=7).ping_timeout == 7.0


def test_a_ping_timeout_of_zero_means_no_timeout():
    created = ConnectionOptions.create(ping_interval=7, ping_timeout=0)
    assert (created.ping_interval, created.ping_timeout) == (7.0, 0.0)


def test_a_shorter_ping_timeout_is_kept(caplog):
    assert ConnectionOptions.create(ping_interval=10, ping_timeout=3).ping_timeout == 3.0
    assert warnings_in(caplog) == []


def test_a_ping_timeout_without_an_interval_is_kept_uncapped(caplog):
    created = ConnectionOptions.create(ping_timeout=30)
    assert (created.ping_interval, created.ping_timeout) == (0.0, 30.0)
    assert warnings_in(caplog) == []


def test_options_are_frozen():
    created = ConnectionOptions.create()
    with pytest.raises(dataclasses.FrozenInstanceError):
        created.close_timeout = 1.0  # type: ignore[misc]


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"ping_interval": -1}, "ping_interval"),
        ({"ping_timeout": -0.5}, "ping_timeout"),
        ({"ping_interval": 5, "ping_timeout": -1}, "ping_timeout"),
        ({"close_timeout": 0}, "close_timeout"),
        ({"close_timeout": -2}, "close_timeout"),
        ({"max_message_size": -1}, "max_message_size"),
        ({"max_write_buffer_size": -1}, "max_write_buffer_size"),
        ({"max_queued_messages": 0}, "max_queued_messages"),
        ({"max_queued_messages": -3}, "max_queued_messages"),
    ],
)
def test_impossible_values_raise_value_error_naming_the_option(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ConnectionOptions.create(**kwargs)


def test_zero_sizes_are_allowed():
    created = ConnectionOptions.create(max_message_size=0, max_write_buffer_size=0, max_queued_messages=1)
    assert (created.max_message_size, created.max_write_buffer_size, created.max_queued_messages) == (0, 0, 1)


# -- the ping timeout cap and its warning ------------------------------------------------------


def test_a_longer_ping_timeout_is_capped_to_the_interval_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    created = ConnectionOptions.create(ping_interval=5, ping_timeout=9)
    assert created.ping_timeout == 5.0
    assert warnings_in(caplog) == [
        "The WebSocket ping timeout (9) cannot be longer than the ping interval (5.0); using 5.0"
    ]


def test_the_cap_warning_is_logged_once_per_process(caplog):
    caplog.set_level(logging.WARNING)
    assert ConnectionOptions.create(ping_interval=5, ping_timeout=9).ping_timeout == 5.0
    ConnectionOptions.create.cache_clear()  # not only the cache keeps it quiet
    assert ConnectionOptions.create(ping_interval=5, ping_timeout=9).ping_timeout == 5.0
    assert ConnectionOptions.create(ping_interval=2, ping_timeout=3).ping_timeout == 2.0
    assert len(warnings_in(caplog)) == 1


# -- one object for equal settings ---------------------------------------------------------------


def test_equal_settings_share_one_object():
    first = ConnectionOptions.create(ping_interval=3, max_queued_messages=8)
    second = ConnectionOptions.create(ping_interval=3, max_queued_messages=8)
    assert first is second


def test_different_settings_get_different_objects():
    first = ConnectionOptions.create(ping_interval=3)
    second = ConnectionOptions.create(ping_interval=4)
    assert first is not second
    assert first != second


def test_the_cache_is_bounded():
    info = ConnectionOptions.create.cache_info()
    assert info.maxsize == 64
    for n in range(100):
        ConnectionOptions.create(max_queued_messages=n + 1)
    assert ConnectionOptions.create.cache_info().currsize == 64


# -- warn_once and unknown compression options ---------------------------------------------------


def test_warn_once_logs_each_key_once(caplog):
    caplog.set_level(logging.WARNING)
    warn_once("a", "first %s", 1)
    warn_once("a", "first %s", 2)
    warn_once("b", "second %s", 3)
    assert warnings_in(caplog) == ["first 1", "second 3"]


@pytest.mark.parametrize("given", [None, {}, {"compression_level": 5, "mem_level": 4, "threshold": 0}])
def test_known_or_no_compression_options_warn_nothing(caplog, given):
    caplog.set_level(logging.WARNING)
    warn_unknown_compression_options(given)
    assert warnings_in(caplog) == []


def test_the_short_compression_names_are_known(caplog):
    caplog.set_level(logging.WARNING)
    warn_unknown_compression_options({"max_window_bits": 10, "no_context_takeover": True})
    assert warnings_in(caplog) == []


def test_unknown_compression_options_are_named_once_per_set(caplog):
    caplog.set_level(logging.WARNING)
    warn_unknown_compression_options({"zeta": 1, "alpha": 2, "compression_level": 3})
    warn_unknown_compression_options({"alpha": 9, "zeta": 0})  # the same names: already said
    warn_unknown_compression_options({"beta": 1})
    assert warnings_in(caplog) == [
        "ignoring unknown compression options: alpha, zeta",
        "ignoring unknown compression options: beta",
    ]

"""BufferConfig validation: every bad value is a ConfigError naming field, value and rule."""

from __future__ import annotations

import math

import pytest

from jobbuf import BufferConfig, ConfigError


def test_defaults_match_the_contract() -> None:
    cfg = BufferConfig()
    assert (cfg.capacity, cfg.low_water, cfg.batch_size) == (50, 10, 50)
    assert (cfg.poll_interval, cfg.ttl, cfg.lease, cfg.heartbeat_interval) == (2.0, 60.0, 30.0, 10.0)
    assert (cfg.stats_interval, cfg.max_attempts, cfg.queues) == (1.0, 20, ("default",))


def test_derived_defaults_follow_their_base() -> None:
    cfg = BufferConfig(capacity=8, low_water=8, lease=9)
    assert cfg.batch_size == 8 and cfg.heartbeat_interval == 3


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"low_water": 0}, "low_water"),
        ({"low_water": 51}, "low_water"),
        ({"batch_size": 0}, "batch_size"),
        ({"capacity": 5, "low_water": 5, "batch_size": 6}, "batch_size"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": math.nan}, "ttl"),
        ({"lease": 0}, "lease"),
        ({"lease": "30"}, "lease"),
        ({"heartbeat_interval": 30}, "heartbeat_interval"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"stats_interval": 0}, "stats_interval"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"queues": ()}, "queues"),
        ({"queues": "default"}, "queues"),
        ({"queues": ("a", "a")}, "queues"),
        ({"queues": ("bad name",)}, "queue"),
        ({"retry_base": 0}, "retry_base"),
        ({"retry_max": 1e12}, "retry_max"),  # past 100 years: would overflow the sources' clocks
        ({"shutdown_timeout": math.inf}, "shutdown_timeout"),
    ],
)
def test_bad_values_name_field_value_and_rule(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BufferConfig(**options)  # type: ignore[arg-type]
    message = str(info.value)
    assert field in message
    assert "must" in message or "valid name" in message
    assert isinstance(info.value, ValueError)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        BufferConfig(capcity=5)  # type: ignore[call-arg]


def test_positional_arguments_are_rejected() -> None:
    with pytest.raises(TypeError):
        BufferConfig(5)  # type: ignore[misc]


def test_config_is_frozen_and_queues_become_a_tuple() -> None:
    cfg = BufferConfig(queues=["a", "b"])  # type: ignore[arg-type]
    assert cfg.queues == ("a", "b")
    with pytest.raises(AttributeError):
        cfg.capacity = 3  # type: ignore[misc]

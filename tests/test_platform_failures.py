"""A start that cannot succeed: one clear message, and nothing left running or half-started."""

from __future__ import annotations

import socket

import pytest
from conftest import cleanup_platform, make_spec, quiet_console

from airflow_gitops.errors import PlatformError
from airflow_gitops.local.platform import LocalTarget

pytestmark = pytest.mark.platform  # starts a real local platform


def test_port_in_use_is_named_with_its_key_and_nothing_starts(tmp_path):
    spec = make_spec(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", spec.local.ports.mlflow))
        squatter.listen()
        platform = LocalTarget(spec)
        with pytest.raises(PlatformError) as err:
            platform.up(quiet_console())
    assert "local.ports.mlflow" in err.value.render() and str(spec.local.ports.mlflow) in err.value.render()
    assert not platform.supervisor.running()


def test_crashing_component_is_named_with_its_log_and_everything_is_stopped(tmp_path):
    # An api-server that cannot start: a non-numeric worker count makes it exit at once, every retry.
    spec = make_spec(tmp_path, {"airflow": {"config": {"api": {"workers": "many"}}}})
    platform = LocalTarget(spec)
    try:
        with pytest.raises(PlatformError) as err:
            platform.up(quiet_console())
        message = err.value.render()
        assert "api-server" in message and "airflow-gitops logs api-server" in message
        assert str(platform.supervisor.log_of("api-server")) in message
        assert not platform.supervisor.running(), "a failed start must stop what it started"
        # The data it created is kept (a fixed config and `up` resumes).
        assert (spec.secrets_dir / "fernet.key").exists()
    finally:
        cleanup_platform(platform)

"""Two local instances on one broker keep apart by default: in embedded mode (no
`MONGODB_URL`) with `AMQP_PREFIX` unset, the prefix comes from the data directory. And the
reconciler's settings."""

from __future__ import annotations

import pytest

from service.config import ConfigError, Settings, local_amqp_prefix
from service.messaging.broker import Topology


def queue_of(env: dict[str, str]) -> str:
    return Topology(Settings.from_env(env).amqp_prefix).queue


def test_two_data_directories_give_two_sets_of_queues(tmp_path) -> None:
    first = queue_of({"DATA_DIR": str(tmp_path / "one")})
    second = queue_of({"DATA_DIR": str(tmp_path / "two")})
    assert first != second
    assert first.endswith("medical_events.jobs") and first.startswith("local.")
    # Every command run with the same DATA_DIR (`run`, `publish`, `dead-letters`) agrees,
    # however the directory is written.
    assert queue_of({"DATA_DIR": str(tmp_path / "one")}) == first
    assert queue_of({"DATA_DIR": str(tmp_path / "x" / ".." / "one")}) == first
    assert Settings.from_env({"DATA_DIR": str(tmp_path / "one")}).amqp_prefix == (
        local_amqp_prefix(tmp_path / "one")
    )


def test_the_shared_names_stay_where_asked_for_or_with_a_mongodb_url(tmp_path) -> None:
    directory = str(tmp_path / "one")
    # Set, even empty: the names as the README gives them.
    assert queue_of({"DATA_DIR": directory, "AMQP_PREFIX": ""}) == "medical_events.jobs"
    assert queue_of({"DATA_DIR": directory, "AMQP_PREFIX": "staging."}) == (
        "staging.medical_events.jobs"
    )
    # A MongoDB server of its own (production, compose): the names producers are told.
    assert queue_of({"DATA_DIR": directory, "MONGODB_URL": "mongodb://db/"}) == (
        "medical_events.jobs"
    )


def test_reconciler_settings() -> None:
    defaults = Settings.from_env({"MONGODB_URL": "mongodb://db/"})
    assert defaults.reconcile_interval_seconds == 60
    assert defaults.job_deadline_grace_seconds == 300
    assert defaults.job_max_pending_seconds == 86400
    settings = Settings.from_env(
        {
            "RECONCILE_INTERVAL_SECONDS": "10",
            "JOB_DEADLINE_GRACE_SECONDS": "120",
            "JOB_MAX_PENDING_SECONDS": "0",
        }
    )
    assert (
        settings.reconcile_interval_seconds,
        settings.job_deadline_grace_seconds,
        settings.job_max_pending_seconds,
    ) == (10, 120, 0)
    # A grace shorter than the consumer's longest outage backoff (30 s) could end a job
    # whose message a consumer holds: refused.
    with pytest.raises(ConfigError, match="JOB_DEADLINE_GRACE_SECONDS"):
        Settings.from_env({"JOB_DEADLINE_GRACE_SECONDS": "30"})
    with pytest.raises(ConfigError, match="JOB_MAX_PENDING_SECONDS"):
        Settings.from_env({"JOB_MAX_PENDING_SECONDS": "100"})


def test_the_reconciler_runs_at_least_twice_per_grace(monkeypatch, capsys) -> None:
    """Rule 1 of the reconciler holds only if its runs are at most half the grace apart."""
    url = {"MONGODB_URL": "mongodb://db/"}
    at_most = Settings.from_env(
        {**url, "RECONCILE_INTERVAL_SECONDS": "30", "JOB_DEADLINE_GRACE_SECONDS": "60"}
    )
    assert (at_most.reconcile_interval_seconds, at_most.job_deadline_grace_seconds) == (30, 60)
    for interval, grace in (("3600", "60"), ("31", "60"), ("301", None)):
        env = {**url, "RECONCILE_INTERVAL_SECONDS": interval}
        if grace is not None:
            env["JOB_DEADLINE_GRACE_SECONDS"] = grace
        with pytest.raises(ConfigError) as refused:
            Settings.from_env(env)
        assert "RECONCILE_INTERVAL_SECONDS" in str(refused.value)
        assert "JOB_DEADLINE_GRACE_SECONDS" in str(refused.value)

    # Refused as every configuration error is: exit code 2, the message on stderr.
    from service.cli.main import main

    monkeypatch.setenv("RECONCILE_INTERVAL_SECONDS", "3600")
    monkeypatch.setenv("JOB_DEADLINE_GRACE_SECONDS", "60")
    assert main(["token", "--client-id", "c"]) == 2
    assert "RECONCILE_INTERVAL_SECONDS" in capsys.readouterr().err

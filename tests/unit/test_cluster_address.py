"""jobs.train.cluster_address_env: a job that joins a cluster by host:port tells its actors that address."""

from __future__ import annotations

import json

import pytest

from jobs.train import cluster_address_env


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "10.0.0.5:30150", "[::1]:6379"])
def test_a_gcs_address_is_given_to_the_jobs_actors(address, monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert cluster_address_env(address) == {"env_vars": {"RAY_ADDRESS": address}}


@pytest.mark.parametrize("address", ["auto", "ray://127.0.0.1:10001", "http://127.0.0.1:8265", ":6379", "host:port"])
def test_other_address_forms_are_left_to_ray(address, monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert cluster_address_env(address) is None


def test_a_submitted_jobs_own_ray_address_is_not_overridden(monkeypatch):
    """ray.init refuses a runtime env whose env var conflicts with the submitted job's: leave the job's."""
    job = {"runtime_env": {"env_vars": {"RAY_ADDRESS": "127.0.0.1:1"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert cluster_address_env("127.0.0.1:6379") is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"X": "1"}}}))
    assert cluster_address_env("127.0.0.1:6379") == {"env_vars": {"RAY_ADDRESS": "127.0.0.1:6379"}}

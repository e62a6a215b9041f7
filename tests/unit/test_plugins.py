"""Plug-in registration and parameters: entry points, collisions with built-ins, eviction
policies built with their Params."""

from __future__ import annotations

import dataclasses
from importlib.metadata import EntryPoint, EntryPoints

import pytest

from mpi_kvbench import config, registry
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.eviction.lru import LruPolicy
from mpi_kvbench.run import policy_factory


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, group_name: str, **eps: str) -> None:
    installed = EntryPoints(EntryPoint(n, v, group_name) for n, v in eps.items())
    monkeypatch.setattr(registry, "_installed", lambda: installed)


def test_a_plugin_that_takes_a_builtin_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, "mpi_kvbench.tiers", storage="elsewhere:Storage")
    with pytest.raises(ConfigError, match="elsewhere:Storage tries to replace built-in tiers 'storage'"):
        registry.Registry("tiers", {"storage": "mpi_kvbench.tiers.storage:StorageTier"}, ())


def test_a_plugin_with_a_new_name_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, "mpi_kvbench.policies", mine="mpi_kvbench.eviction.lru:LruPolicy")
    reg = registry.Registry("policies", {}, ("victims",))
    assert reg.names() == ["mine"] and reg.load("mine") is LruPolicy


def test_a_plugin_missing_an_operation_is_refused_when_loaded() -> None:
    reg = registry.Registry("policies", {"x": "mpi_kvbench.eviction.lru:LruPolicy"}, ("victims", "nope"))
    with pytest.raises(ConfigError, match="policies 'x' lacks nope"):
        reg.load("x")


def test_an_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="unknown policies 'lur'; did you mean 'lru'"):
        registry.POLICIES.load("lur")


def test_policies_get_their_params_from_the_config() -> None:
    cfg = config.load()
    policy = policy_factory(cfg)()
    assert isinstance(policy, LruPolicy) and dataclasses.is_dataclass(policy.params)
    assert policy_factory(cfg)() is not policy            # one instance per tier
    with pytest.raises(ConfigError, match=r"engine.policy_params.size: unknown setting"):
        config.load(None, [{"engine": {"policy_params": {"size": 3}}}])

"""Shared fixtures: saved tiny towers and the reference fixture directory."""

from __future__ import annotations

import os

import pytest
import torch

from servers import processes  # noqa: F401 - the fixture that starts servers on loopback
from tiny import FIXTURES, save_clip_tower, save_eva_tower, save_siglip_tower

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def siglip_tower(tmp_path_factory) -> str:
    return save_siglip_tower(tmp_path_factory.mktemp("towers") / "siglip-test")


@pytest.fixture(scope="session")
def clip_tower(tmp_path_factory) -> str:
    return save_clip_tower(tmp_path_factory.mktemp("towers") / "clip-test")


@pytest.fixture(scope="session")
def eva_tower(tmp_path_factory) -> str:
    return save_eva_tower(tmp_path_factory.mktemp("towers"))


@pytest.fixture()
def in_fixture_root(monkeypatch):
    """The reference checkpoints name their tower relative to the fixture root."""
    monkeypatch.chdir(FIXTURES)
    return FIXTURES

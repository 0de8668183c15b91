"""The Examples sections of module docstrings run, so they cannot drift from the code."""

import doctest
import importlib

import pytest

MODULES = ["streams.scope", "streams.batches", "streams.numbers", "streams.topics",
           "streams.features",
           "streams.source_features", "online_models.source_scorer",
           "services.ingest.replay_guard"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0

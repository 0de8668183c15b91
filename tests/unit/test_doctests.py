"""The Examples sections of module docstrings run, so they cannot drift from the code."""

import doctest
import importlib

import pytest

MODULES = ["streams.scope", "streams.batches", "streams.source_features", "online_models.source_scorer",
           "streams.topics"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0

"""The package metadata as setuptools reads it when `pip install` builds the project."""

from __future__ import annotations

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_pyproject_uses_no_metadata_form_setuptools_will_stop_building():
    # setuptools warns that builds with the `license = {text = ...}` table stop working after 2027-02-18
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distribution = apply_configuration(Distribution(), str(PYPROJECT))
    assert not [w for w in caught if "Deprecation" in w.category.__name__ or "deprecated" in str(w.message)]
    assert distribution.metadata.license_expression == "Apache-2.0"

"""Packaging glue that pyproject.toml cannot express: ship the top-level `conf/` as `lesionseg.conf`."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["lesionseg", "lesionseg.*"]), "lesionseg.conf"],
    package_dir={"lesionseg.conf": "conf"},
)

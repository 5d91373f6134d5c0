"""The packages the distribution holds, found rather than listed (the rest of the metadata is in pyproject.toml).

The repository keeps its DataModules and recipes in the top-level ``datamodules/`` and ``recipes/`` folders (the
model-zoo layout); they install as ``lit_align.datamodules`` and ``lit_align.recipes``, so a user project with a
``datamodules`` package of its own is not shadowed and ``lit-align dpo fit`` needs no clone. Every package under the
three folders is found here, so a new subpackage ships without an edit (``tests/test_wheel.py`` installs the wheel
and imports every module).
"""

from setuptools import find_namespace_packages, find_packages, setup

MAPPED = {"lit_align.datamodules": "datamodules", "lit_align.recipes": "recipes"}


def packages() -> list[str]:
    found = find_packages(include=["lit_align", "lit_align.*"])
    for name, folder in MAPPED.items():  # data folders (recipes/configs/examples) are packages of their files too
        subpackages = find_namespace_packages(folder, exclude=["*__pycache__*"])
        found += [name, *(f"{name}.{sub}" for sub in subpackages)]
    return sorted(found)


setup(packages=packages(), package_dir=MAPPED)

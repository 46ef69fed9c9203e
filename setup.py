"""Packaging that pyproject.toml cannot say statically: the top-level folders of the repository
install as subpackages of `eventkeep`, each with every package folder beneath it (found, not
listed by hand, so a new subpackage cannot be left out of the wheel)."""

from setuptools import find_packages, setup

SUBPACKAGES = ("domain", "commands", "eventstore", "projections", "api", "replay", "bench")

packages = ["eventkeep"]
package_dir = {"eventkeep": "eventkeep"}
for folder in SUBPACKAGES:
    packages += [f"eventkeep.{folder}"]
    packages += [f"eventkeep.{folder}.{sub}" for sub in find_packages(folder)]
    package_dir[f"eventkeep.{folder}"] = folder

setup(packages=packages, package_dir=package_dir)

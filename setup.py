"""The package list, found from the folders (pyproject.toml holds everything else): a new export format
(`export/NAME/`), student or teacher-source package is in the wheel without an edit here."""
from pathlib import Path

from setuptools import setup

# import name -> folder; sub-packages (folders with __init__.py) follow their parent's mapping
ROOTS = {"xtremedistil": "xtremedistil", "xtremedistil.distill": "distill", "xtremedistil.export": "export",
         "xtremedistil.bench": "bench"}


def find_packages() -> list[str]:
    here = Path(__file__).parent
    return sorted(".".join([name, *init.parent.relative_to(here / folder).parts])
                  for name, folder in ROOTS.items() for init in (here / folder).rglob("__init__.py"))


setup(package_dir=ROOTS, packages=find_packages())

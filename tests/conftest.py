import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folder per architecture, built once per test session: {"bert": Path, ...}."""
    cache = {}

    def get(kind="bert"):
        if kind not in cache:
            cache[kind] = helpers.save_tiny_model(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)
        return cache[kind]

    return get

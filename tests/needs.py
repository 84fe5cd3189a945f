"""A test's missing tool or package: skipped with the reason on a user's machine, a failure on CI (``CI=true``),
where ``.ci/run`` installs everything the suite needs."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, installed_by: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} on CI ({installed_by})")
    pytest.skip(reason)

"""Jobs checked with LAVA's own schema: `lava_common.schemas.validate(job, strict=True)` from
Debian's lava-common, unpacked into the cache (artifacts/lava_packages.py)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click

from dmalab.artifacts.lava_packages import ensure_lava_packages
from dmalab.errors import CheckFailed, EnvironmentProblem


def lava_validator() -> Any:
    """`lava_common.schemas.validate`, importable after this call."""
    packages = ensure_lava_packages(lambda m: click.echo(m, err=True))
    if str(packages.python) not in sys.path:
        sys.path.append(str(packages.python))  # after the venv's: its own packages win
    try:
        from lava_common.schemas import validate
    except ImportError as exc:  # voluptuous, its one dependency
        raise EnvironmentProblem(
            f"LAVA's schema needs {exc.name}: pip install {exc.name}"
        ) from None
    return validate


def validate_jobs(jobs: Mapping[str, Mapping[str, Any]]) -> None:
    """CheckFailed naming the first job LAVA's schema refuses, and why."""
    validate = lava_validator()
    for name, job in jobs.items():
        try:
            validate(dict(job), strict=True)
        except Exception as exc:  # voluptuous's Invalid and LAVA's own JobError
            raise CheckFailed(f"{name}: LAVA's schema refuses it: {exc}") from None

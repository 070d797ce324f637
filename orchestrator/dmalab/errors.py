"""One error hierarchy for dmalab, most generic first.

The CLI turns each into one line and an exit code.
"""

from __future__ import annotations

#: Documented exit codes (README, "Exit codes"); a signal adds 128 + its number (cli/signals.py).
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 3


class DmalabError(Exception):
    """Anything dmalab reports to a user as one line instead of a traceback."""

    exit_code = EXIT_ENVIRONMENT


class EnvironmentProblem(DmalabError):
    """A prerequisite is missing or a build failed; the message says how to fix it."""

    exit_code = EXIT_ENVIRONMENT


class BadInput(DmalabError):
    """A file or option given by the user is wrong; the message names file, field and problem."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(DmalabError):
    """A check ran and found a problem (the device misbehaved, a scenario failed)."""

    exit_code = EXIT_CHECK_FAILED

"""Errors that reach the user.

A :class:`UserInputError` carries one sentence that names the problem and the fix; the CLI
prints it without a traceback and exits with status 2. Any other exception is an internal
error (status 1).
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user (file, model, target, method, parameter, resources)."""


class OutOfMemoryError(UserInputError):
    """The work did not fit in memory even at the smallest batch size."""


class CancelledError(Exception):
    """The run was cancelled through its cancel token."""


class BudgetExceededError(Exception):
    """A method ran past its time budget."""

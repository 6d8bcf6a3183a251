"""Cohorts: one job template over many cases, resumable, on this machine or a Ray cluster.

``run_cohort(cohort, template, out)`` (or ``torchesegeta batch``) writes one run folder per case
into ``out`` and a summary over the cases; see :mod:`.cases` for cohort files and folders,
:mod:`.plan` for resuming, :mod:`.local` and :mod:`.ray_engine` for the engines and
:mod:`.summary` for the files written. Importing this package does not import torch or Ray.

May import: :mod:`TorchEsegetaLib.runs` and what it may import; never :mod:`TorchEsegetaLib.cli`.
"""

from __future__ import annotations

from .cases import Case, read_cohort
from .run import (
    EXIT_ALL_OK,
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    CohortInterrupted,
    CohortResult,
    run_cohort,
)

__all__ = [
    "EXIT_ALL_OK",
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "Case",
    "CohortInterrupted",
    "CohortResult",
    "read_cohort",
    "run_cohort",
]

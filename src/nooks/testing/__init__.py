"""The spec test kit: a fake domain that fails on cue, and the matrix every class's
spec runs (phases of a recovery × ways a driver fails × strategies).

A class writes a ``SpecKit`` (its spec, a model driver, a scenario) and calls
``check``; see ``nooks.fs.kit`` and ``nooks.web.kit`` for the shipped classes.
"""

from nooks.testing.fake import FAILURES, FakeDomain, Trigger
from nooks.testing.matrix import PHASES, Case, Probed, Ref, Result, SpecKit, check, run, start

__all__ = ["FAILURES", "PHASES", "Case", "FakeDomain", "Probed", "Ref", "Result", "SpecKit",
           "Trigger", "check", "run", "start"]

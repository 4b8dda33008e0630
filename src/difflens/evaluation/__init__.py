"""Evaluation of dictionaries and analyses of activation stores.

One FVU definition everywhere (see :mod:`difflens.evaluation.metrics`).
"""

from .metrics import MetricAccumulator, evaluate, fvu

__all__ = ["MetricAccumulator", "evaluate", "fvu"]

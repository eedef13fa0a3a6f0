"""Errors streamgmm raises beyond Python's own."""

from sklearn.exceptions import NotFittedError

__all__ = ["NotFittedError"]

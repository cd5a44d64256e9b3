"""Errors raised by the coordination package; each names what was wrong and what was expected."""


class CoordinationError(Exception):
    """Bad input to CoDE: an invalid path, an unknown model or dataset, an unsplittable model."""


class FrozenParameterChanged(CoordinationError):
    """Training changed a parameter or buffer of a frozen block (a bug; links alone may learn)."""


class DatasetUnavailable(CoordinationError):
    """A dataset file could not be fetched (network): the input may be fine, a retry may help."""

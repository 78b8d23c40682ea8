"""Exceptions a user can cause.

Every error that comes from bad input (a wrong shape, dtype or range, a NaN, a label
out of range, a corrupt file, an unknown name) is a :class:`QuantadvError`, which is a
``ValueError`` subclass, so ``except ValueError`` catches all of them. The message says
what was wrong and how to fix it.
"""


class QuantadvError(ValueError):
    """Base class of all user-facing errors raised by quantadv."""


class InputError(QuantadvError):
    """An image, label or parameter tensor passed to a function is not acceptable."""


class DataError(QuantadvError):
    """A dataset cannot be found, or a data file is corrupt, truncated or of the wrong format."""


class ModelError(QuantadvError):
    """A model name is unknown, or a weight file / manifest does not verify."""


class ConfigError(QuantadvError):
    """An experiment configuration is invalid."""

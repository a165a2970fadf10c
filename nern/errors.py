"""The exceptions the library raises.

    NernError                  base class: every error a user can cause
    ├── CheckpointError        a checkpoint that cannot be read safely or is not a state_dict
    │   └── UnsafeCheckpointError  a pickled object other than tensors (whole model, code)
    ├── TargetError            unknown architecture, or weights that do not match it
    ├── ConfigError            an invalid training / compression setting
    ├── DataError              unreadable or malformed input images
    ├── PackageError           a predictor package that cannot be read or does not match
    └── CancelledError         training stopped because the caller asked it to

Messages are one line, say what was wrong and, where possible, what to do instead.
"""

from __future__ import annotations


class NernError(Exception):
    """Base class of every error a user of the library can cause."""


class CheckpointError(NernError):
    """The checkpoint cannot be read, or holds something other than a state_dict."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint pickles objects other than tensors (a whole model, or code)."""


class TargetError(NernError):
    """Unknown architecture, or weights that do not fit the architecture."""


class ConfigError(NernError):
    """An invalid setting."""


class DataError(NernError):
    """Input images that cannot be read."""


class PackageError(NernError):
    """A predictor package that cannot be read or does not match its checkpoint."""


class CancelledError(NernError):
    """Training was stopped on request."""

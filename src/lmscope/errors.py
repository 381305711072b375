"""The one exception type the command line turns into a one-line message.

Anything a user can cause (a missing file, a bad config value, a corrupt checkpoint)
raises `LmscopeError` with a message that names the problem. Anything else that
escapes is a bug in lmscope and keeps its traceback.
"""


class LmscopeError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ConfigError(LmscopeError):
    """An invalid configuration key or value."""


class CheckpointError(LmscopeError):
    """A checkpoint that is missing, corrupt or incompatible."""


class TrainingInterrupted(LmscopeError):
    """Ctrl-C during training: the state was saved and the run can be resumed (or, before the
    first state, what the start wrote was removed and the same command starts afresh). (Defined here,
    not in the trainer, so the command line can catch it without importing torch.)"""

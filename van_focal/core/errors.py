"""The errors whose message already says what to do. Every layer may raise them; the command-line
tools show them as one line and exit with status 2, without a traceback."""


class UsageError(RuntimeError):
    """A mistake in the command line, a config file or the data, with what to do about it."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with what to do about it."""


class DeviceError(RuntimeError):
    """The device asked for is not usable on this machine."""


class BadImageError(UsageError):
    """An image file that cannot be decoded."""


class NonFiniteLossError(UsageError):
    """Training diverged; the checkpoints on disk are from before it."""


class CheckpointWriteError(UsageError):
    """A checkpoint could not be written (full disk, quota, permissions); the earlier ones are intact."""


# Errors whose message already says what to do: shown without a traceback.
USER_ERRORS = (UsageError, CheckpointError, DeviceError)

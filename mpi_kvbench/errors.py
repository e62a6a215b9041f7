"""The one error type users see: a one-line message that names the field and the fix."""

# Exit statuses (README "Exit status"): one per cause, the same on every rank.
OK, FAILED, CONFIG = 0, 1, 2


class ConfigError(ValueError):
    """Bad input. The CLI prints ``error: <message>`` and exits with status 2."""


class RunFailed(RuntimeError):
    """A failure every rank agreed on, with the exit status its cause gets (``CONFIG`` for
    the user's mistake, ``FAILED`` for a rank's failure, 128 + N for signal N)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

"""The one error type users see: a one-line message that names the field and the fix."""


class ConfigError(ValueError):
    """Bad input. The CLI prints ``error: <message>`` and exits with status 2."""


class RunFailed(RuntimeError):
    """A failure every rank agreed on; ``config`` marks the user's mistake (exit 2)."""

    def __init__(self, message: str, config: bool) -> None:
        super().__init__(message)
        self.config = config

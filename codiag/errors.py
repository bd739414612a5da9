"""Errors that the command line turns into one clear line and exit status 2."""


class UsageError(Exception):
    """Bad user input (a missing file, an unknown name, an impossible value).

    The CLI prints ``codiag: <message>`` and exits 2, with no traceback.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a run was open: the run ends "interrupted", like Ctrl-C."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum

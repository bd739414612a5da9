"""Errors that the command line turns into one clear line and exit status 2."""


class UsageError(Exception):
    """Bad user input (a missing file, an unknown name, an impossible value).

    The CLI prints ``codiag: <message>`` and exits 2, with no traceback.
    """

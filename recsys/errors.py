"""The one exception type for errors a user can cause (bad path, bad flag, malformed file)."""


class RecsysError(Exception):
    """A problem the user can fix. The message says what was wrong and what to do.

    The CLI prints it as one line and exits with ``exit_code``; it never becomes a traceback.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

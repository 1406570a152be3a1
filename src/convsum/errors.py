"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ConvsumError(Exception):
    """A user-facing error: bad input, bad config, missing file. Never shown as a traceback."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line for a one-line error (library messages can be pages long)."""
    return str(e).strip().splitlines()[0][:limit] if str(e).strip() else type(e).__name__

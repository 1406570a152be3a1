"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ConvsumError(Exception):
    """A user-facing error: bad input, bad config, missing file. Never shown as a traceback."""

"""The one exception type the command line turns into a one-line message (no traceback)."""


class PfadsegError(Exception):
    """A problem the user can fix: bad input file, unknown category, missing weights, ..."""

"""The command line's own failure."""


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit status."""

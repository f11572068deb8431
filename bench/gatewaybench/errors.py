"""The benchmark's two errors.

BenchError   the run cannot go on, or what it measured is wrong: exit status 2
CallFailed   one request got no complete answer (counted, and then fails the row)
"""


class BenchError(Exception):
    """The benchmark could not run, or what it measured is wrong (errors, inexact billing)."""


class CallFailed(Exception):
    """A request got no complete HTTP answer: connection refused or lost, timeout, bad HTTP.

    Each client translates its own failures into this one, so that the workers count them
    the same way whichever client measured.
    """

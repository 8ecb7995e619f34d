"""The one error type every library function raises for bad input."""

from __future__ import annotations


class NervesegError(Exception):
    """Bad input or an unusable environment, described in one line for the user.

    The CLI turns it into ``error: <message>`` on stderr and exit code 2; anything else is a bug
    and keeps its traceback.
    """

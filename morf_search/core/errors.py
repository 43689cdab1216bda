"""Errors caused by the user's input (files, paths, arguments).

The command line prints them as one line each and exits with status 2, never with a
traceback; anything else escaping is a bug in morf-search.
"""


class UserError(Exception):
    """A problem with what the user gave us; the message says what and what is expected."""

    exit_code = 2

    @property
    def lines(self):
        return str(self).splitlines()

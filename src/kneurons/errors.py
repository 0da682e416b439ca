"""Errors a user can fix: the workflow prints their one-line message, without a traceback."""


class UserError(Exception):
    """Bad input, a failed download or a bad config; the message is one line naming the file,
    record, URL or key and what is wrong."""

"""Errors caused by what the user asked for; the CLIs print them as one line and exit non-zero."""


class UserError(Exception):
    """A mistake in the command's input or arguments: the message alone tells the user what to fix."""

"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input or a bad request: the message is shown to the user as it is, without a traceback."""

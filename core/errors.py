"""The one error type the CLI shows without a traceback."""


class UserError(ValueError):
    """Bad input the user can fix. The message names the file, the line and the fix."""

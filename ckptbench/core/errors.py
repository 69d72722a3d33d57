"""The one exception type for mistakes a user can fix.

The CLI prints a UserError as a single line (no traceback) and exits with status 2,
like asv does; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the field or file and says how to fix it."""

    exit_status = 2

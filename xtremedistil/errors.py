"""The project's error type for problems the user can fix (bad input, bad flags, bad files)."""


class XtremeDistilError(ValueError):
    """A user-facing error: the CLI prints its message (no traceback) and exits with `exit_code`.

    `problems` holds one line per problem (`path:line: what is wrong`) when there are several.
    """

    exit_code = 2

    def __init__(self, message, problems=None):
        self.problems = list(problems or [])
        super().__init__(message)

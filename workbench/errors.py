"""The one exception type users meet: every message says what was wrong and what to do."""


class WorkbenchError(Exception):
    """A user-facing error (bad name, missing file, damaged checkpoint); the message says what to do."""

"""The one exception type the pipeline raises for bad input.

Its message is a single line meant for the user: the CLI prints it without a
traceback, and Dagster shows it as the failure reason.
"""


class PipelineError(Exception):
    """Bad input or an unusable environment, explained in one line."""


def redact(text: str) -> str:
    """A URL, or a message quoting one, as it may be printed or recorded: any user:password@ becomes ***@."""
    import re

    return re.sub(r"://[^/@\s]*@", "://***@", text)


def printable(text: str) -> str:
    """Text safe for a terminal: control characters (an ANSI escape in a file name) shown escaped, not run."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def os_error_line(err: OSError) -> str:
    """An operating-system error in one line, naming the file; a full disk said plainly."""
    import errno

    what = "disk full" if err.errno == errno.ENOSPC else (err.strerror or type(err).__name__)
    where = f" ({err.filename})" if err.filename else ""
    return f"{what}{where}"

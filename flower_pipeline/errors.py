"""The one exception type the pipeline raises for bad input.

Its message is a single line meant for the user: the CLI prints it without a
traceback, and Dagster shows it as the failure reason.
"""


class PipelineError(Exception):
    """Bad input or an unusable environment, explained in one line."""


def redact(url: str) -> str:
    """A URL as it may be printed: a password in it replaced by ***."""
    import re

    return re.sub(r"(://[^/@\s:]*:)[^@/\s]*@", r"\1***@", url)

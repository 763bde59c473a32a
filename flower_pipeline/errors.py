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


MAX_QUOTED = 200  # characters of a user's value an error line quotes


def quoted(value: object) -> str:
    """A user's value as an error line quotes it: repr, at most MAX_QUOTED characters (a 10 kB flag is not
    echoed whole)."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}… ({len(text)} characters)"


DISK_FULL = ("No space left on device", "database or disk is full")  # the OS's words, and SQLite's


def says_disk_full(text: str) -> bool:
    """Whether an error message, whatever raised it, is a full disk underneath."""
    return any(mark in text for mark in DISK_FULL)


def unexpected_line(err: BaseException) -> str:
    """Any exception as one line: a full disk anywhere in its chain said as a full disk (not as the error a
    library raised on top of it), an unreachable database as unreachable, else its type and first line."""
    import errno

    seen, chain = set(), []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for link in chain:
        text = str(link)
        if (isinstance(link, OSError) and link.errno == errno.ENOSPC) or says_disk_full(text):
            return "disk full" + (f" ({link.filename})" if isinstance(link, OSError) and link.filename else "")
    for link in chain:
        text = str(link)
        if "could not connect to server" in text or "too many retries for DB connection" in text \
                or "Connection refused" in text or "could not translate host name" in text:
            return f"a database is unreachable: {redact(text.strip().splitlines()[0][:MAX_QUOTED])}"
    first = chain[0]
    text = str(first).strip().splitlines()[0][:MAX_QUOTED] if str(first).strip() else ""
    return f"{type(first).__name__}: {redact(text)}" if text else type(first).__name__

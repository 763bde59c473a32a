"""`python -m flower_pipeline.scaleout.supervisor CHILD_FILE -- PROGRAM ARGS…`: the thin starter `flower-pipeline stack`
puts in front of each piece. It runs the real program and starts it again when it stops on its own (a crash, a
SIGKILL, the OOM killer), after 1, 2, 4 … 30 s (back to 1 s once a start has lived a minute). A SIGTERM or
SIGINT to the starter is a stop: it is passed on, and nothing is started again.

The program runs in its own process group, whose id (its pid) is kept in CHILD_FILE, so that a crash takes
the program's own children (a Celery worker's pool) with it, and `stack down` can reach them.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FIRST_WAIT, LONGEST_WAIT, HEALTHY_AFTER = 1.0, 30.0, 60.0  # seconds


def supervise(child_file: Path, command: list[str]) -> int:
    stopping: list[int] = []
    child: subprocess.Popen | None = None

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait, restarts = FIRST_WAIT, 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command, start_new_session=True)
        tmp = child_file.with_suffix(".tmp")
        tmp.write_text(str(child.pid))
        tmp.replace(child_file)
        code = child.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # what it left behind dies with it
            os.killpg(child.pid, signal.SIGKILL)
        if stopping:
            child_file.unlink(missing_ok=True)
            return 0
        lived = time.monotonic() - started
        wait = FIRST_WAIT if lived >= HEALTHY_AFTER else wait
        restarts += 1
        print(f"supervise: {Path(command[0]).name} exited with {code} after {lived:.0f} s; "
              f"starting it again in {wait:.0f} s (restart {restarts})", flush=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        if stopping:
            child_file.unlink(missing_ok=True)
            return 0
        wait = min(wait * 2, LONGEST_WAIT)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: python -m flower_pipeline.scaleout.supervisor CHILD_FILE -- PROGRAM ARGS…")
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[3:]))

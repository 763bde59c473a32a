"""`flower-pipeline stack up|down|status`: the scale-out pieces on this machine, each its own real program.

    mlflow             mlflow server on PostgreSQL, artifacts proxied (workers need no shared MLflow folder)
    dagster-daemon     schedules, sensors, the run queue
    dagster-webserver  the UI
    gpu0 … gpuN-1      Celery workers on the `gpu` queue, one step at a time, CUDA_VISIBLE_DEVICES=i
    ingest             a Celery worker on the default queue (download, extraction, resize, registration)

Each piece runs in its own session behind a thin restarter (flower_pipeline/scaleout/supervisor.py: a crashed piece is
started again after 1-30 s), with its log and a record under $DAGSTER_HOME/stack/; `down` stops them (SIGTERM,
then SIGKILL after a grace period). A running piece whose code differs from this checkout's is restarted by
`up`. Nothing here schedules work: Dagster and Celery do. The services (PostgreSQL, RabbitMQ, Redis) are the
environment's: see deploy/stack.env. No password is put on a command line or in a record: the pieces read
them from the environment.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flower_pipeline.environment import (
    BACKEND_ENV,
    BROKER_ENV,
    COMPUTE_LOGS_ENV,
    DAGSTER_HOME_ENV,
    DATA_DIR_ENV,
    MLFLOW_BACKEND_ENV,
    POSTGRES_ENV,
    TRACKING_ENV,
    WEBSERVER_ENV,
)
from flower_pipeline.errors import PipelineError, redact
from flower_pipeline.layout import DataLayout
from flower_pipeline.scaleout.executor import worker_app
from flower_pipeline.scaleout.settings import DEFAULT_QUEUE, GPU_QUEUE, code_version

REQUIRED_ENV = (DAGSTER_HOME_ENV, POSTGRES_ENV, MLFLOW_BACKEND_ENV, TRACKING_ENV, BROKER_ENV, BACKEND_ENV,
                COMPUTE_LOGS_ENV)
RUNS_NO_PROJECT_CODE = ("mlflow",)  # pieces a code change does not concern
START_MARK = "stack: started "  # written to a piece's log at each `up`: what follows is this start's
PROJECT_DIR = Path(__file__).resolve().parents[2]  # workspace.yaml of a source checkout


@dataclass(frozen=True)
class Piece:
    name: str
    command: list[str]
    url: str = ""  # where it answers, for the health check and `status`
    env: dict[str, str] = field(default_factory=dict)


def pieces(workers: int, ingest_concurrency: int, webserver: str, data_dir: Path) -> list[Piece]:
    """The programs `up` starts, in order."""
    bin_dir = Path(sys.executable).parent
    tracking = urllib.parse.urlsplit(os.environ[TRACKING_ENV])
    web = urllib.parse.urlsplit(webserver)
    workspace = ["-w", str(PROJECT_DIR / "workspace.yaml")]

    def worker(name: str, queue: str, concurrency: int, **env: str) -> Piece:
        return Piece(name, [str(bin_dir / "celery"), "-A", "flower_pipeline.scaleout.worker", "worker", "-Q", queue,
                            "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO"], env=env)

    return [
        Piece("mlflow", [str(bin_dir / "mlflow"), "server",  # its store (with its password) from the environment
                         "--serve-artifacts", "--artifacts-destination", str(DataLayout(data_dir).server_artifacts),
                         "--host", tracking.hostname or "127.0.0.1", "--port", str(tracking.port or 5000),
                         "--workers", "1"],
              # asked without the URI's user:password (urllib refuses those in a URL; /health needs none)
              f"{tracking.scheme}://{tracking.hostname or '127.0.0.1'}:{tracking.port or 5000}/health",
              # MLflow's GenAI job runner (seven more processes) serves nothing this project uses
              {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_BACKEND_STORE_URI": os.environ[MLFLOW_BACKEND_ENV]}),
        Piece("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", *workspace]),
        Piece("dagster-webserver", [str(bin_dir / "dagster-webserver"), *workspace, "-h", web.hostname or "127.0.0.1",
                                    "-p", str(web.port or 3000)], f"{webserver.rstrip('/')}/server_info"),
        *(worker(f"gpu{i}", GPU_QUEUE, 1, CUDA_VISIBLE_DEVICES=str(i)) for i in range(workers)),
        worker("ingest", DEFAULT_QUEUE, ingest_concurrency),
    ]


def state_dir() -> Path:
    return Path(os.environ["DAGSTER_HOME"]) / "stack"


def check_environment() -> None:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise PipelineError(f"the stack needs {', '.join(missing)}: `source deploy/stack.env` sets them for this "
                            "machine (docs/operations.md, Scaling out)")


def up(workers: int, ingest_concurrency: int, webserver: str, data_dir: Path, say: Callable[[str], None]) -> None:
    """Start every piece not already running (and again those running other code), wait until each answers,
    and give the gpu pool one slot per GPU worker if it has no limit yet."""
    check_environment()
    running = {name for name, record in records().items() if _settled_alive(record)}
    _check_broker()
    for url in (os.environ[POSTGRES_ENV], os.environ[MLFLOW_BACKEND_ENV]):
        create_database(url)
    say(_gpu_slots(workers))
    state_dir().mkdir(parents=True, exist_ok=True)
    stale = {name: record.get("code_version") for name, record in records().items()
             if name in running and name not in RUNS_NO_PROJECT_CODE and record.get("code_version") != code_version()}
    if stale:  # a GPU step in flight is handed to another worker after the grace period and resumes there
        for name, old in sorted(stale.items()):
            say(f"restarting {name}: it runs code version {old}, this checkout has {code_version()}")
        down(say=lambda _: None, only=set(stale))
        running -= set(stale)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           DATA_DIR_ENV: str(data_dir), WEBSERVER_ENV: webserver}
    started = []
    try:
        for piece in pieces(workers, ingest_concurrency, webserver, data_dir):
            if piece.name in running:  # `up` again starts only what stopped (a killed worker, a stopped server)
                continue
            started.append(_start(piece, {**env, **piece.env}))
        for piece in started:  # all start at once; nothing runs on them before `up` returns
            _wait(piece, lambda p=piece: _answers(p.url) if p.url else _alive(records()[p.name]["pid"]))
        names = {f"{p.name}@" for p in started if p.name.startswith(("gpu", "ingest"))}
        _wait_for_workers(names)
    except BaseException:
        down(say=lambda _: None, only={p.name for p in started})
        raise
    for name in sorted(running):
        say(f"running {name}")
    for piece in started:
        say(f"started {piece.name:18} {piece.url.rsplit('/', 1)[0] if piece.url else ''}")
    say(f"code version {code_version()}; data folder: {data_dir} (every worker must see this path)")


def down(say: Callable[[str], None], grace_seconds: float = 30.0, only: set[str] | None = None) -> None:
    """Stop every piece (or `only` these): SIGTERM (Celery workers finish their step), then SIGKILL after the
    grace period. A step killed here goes to another worker when one runs (its message was not acknowledged)."""
    found = {name: record for name, record in records().items() if only is None or name in only}
    for record in found.values():
        _signal(record["pid"], signal.SIGTERM)  # the restarter passes it on to the program
    deadline = time.monotonic() + grace_seconds
    while any(_alive(r["pid"]) for r in found.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, record in found.items():
        killed = _alive(record["pid"])
        if killed:
            _signal(record["pid"], signal.SIGKILL)
        program = child_pid(name)
        if program is not None:  # the restarter was killed before its program: that goes too
            _signal(program, signal.SIGKILL)
        (state_dir() / f"{name}.json").unlink(missing_ok=True)
        (state_dir() / f"{name}.child").unlink(missing_ok=True)
        say(f"stopped {name}" + (" (killed after the grace period)" if killed else ""))
    if not found:
        say("nothing to stop: the stack is not running")


def status(say: Callable[[str], None]) -> bool:
    """One line per piece, then the gpu pool's limit and who holds its slots; True when every piece runs."""
    import dagster as dg

    found = records()
    if not found:
        raise PipelineError("the stack is not running: `flower-pipeline stack up` starts it")
    for name, record in found.items():
        state = "running" if _alive(record["pid"]) else "stopped"
        say(f"{name:18} {state:8} pid {record['pid']:<8} code {record.get('code_version', '?'):12} "
            f"{record['url'] or ''}  log {record['log']}")
    with dg.DagsterInstance.get() as instance:
        info = instance.event_log_storage.get_concurrency_info(GPU_QUEUE)
    holders = ", ".join(f"run {slot.run_id[:8]} ({slot.step_key})" for slot in info.claimed_slots) or "none"
    say(f"gpu pool: limit {info.slot_count}; held by {holders}; {len(info.pending_steps) - len(info.claimed_slots)} "
        "step(s) waiting")
    return all(_alive(r["pid"]) for r in found.values())


def child_pid(name: str) -> int | None:
    """The pid (and process group) of the program behind a piece's restarter, while it runs."""
    try:
        return int((state_dir() / f"{name}.child").read_text())
    except (OSError, ValueError):
        return None


def _settled_alive(record: dict, timeout: float = 60.0) -> bool:
    """Whether a recorded piece runs. One with an address that is alive but does not answer is starting or
    stopping (a server shutting down its workers): wait until it answers or exits."""
    deadline = time.monotonic() + timeout
    while _alive(record["pid"]) and record["url"] and not _answers(record["url"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(record["pid"])


def records() -> dict[str, dict]:
    folder = state_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def create_database(url: str) -> None:
    """The PostgreSQL database of `url`, created if missing (the server's `postgres` database is asked)."""
    import psycopg2
    from psycopg2 import sql

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    if not parts.scheme.startswith("postgres") or not name:
        return
    server = urllib.parse.urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))  # no +driver
    try:
        admin = psycopg2.connect(server, connect_timeout=10)
    except psycopg2.OperationalError as err:
        raise PipelineError(f"cannot reach PostgreSQL at {parts.hostname}:{parts.port or 5432}: "
                            f"{str(err).strip().splitlines()[0]}") from None
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))  # any name, quoted
    finally:
        admin.close()


def _check_broker() -> None:
    """The broker reachable, before anything starts: workers on a wrong address would only log it."""
    import amqp
    import kombu.exceptions

    try:
        with worker_app().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
    except (OSError, kombu.exceptions.OperationalError, amqp.exceptions.AMQPError) as err:
        raise PipelineError(f"cannot reach the Celery broker {redact(os.environ[BROKER_ENV])}: "
                            f"{str(err).strip().splitlines()[0]}") from None


def _gpu_slots(workers: int) -> str:
    """The gpu pool's limit is the cluster's, not this machine's: set it to `workers` only where none is set
    (an operator's `dagster instance concurrency set gpu N`, or an earlier `up`, stays)."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        if GPU_QUEUE in storage.get_concurrency_keys():
            limit = storage.get_concurrency_info(GPU_QUEUE).slot_count
            return (f"gpu pool: limit {limit} kept (`dagster instance concurrency set {GPU_QUEUE} N` changes it; "
                    f"this machine has {workers} GPU worker(s))")
        storage.set_concurrency_slots(GPU_QUEUE, workers)
        return f"gpu pool: no limit was set; set to {workers} slot(s), one per GPU worker here"


def _start(piece: Piece, env: dict[str, str]) -> Piece:
    log, child = state_dir() / f"{piece.name}.log", state_dir() / f"{piece.name}.child"
    with open(log, "ab") as out:
        out.write(f"{START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        out.flush()
        process = subprocess.Popen([sys.executable, "-m", "flower_pipeline.scaleout.supervisor", str(child), "--",
                                    *piece.command], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=PROJECT_DIR, start_new_session=True)  # its own group: `down` stops all of it
    record = state_dir() / f"{piece.name}.json"
    record.with_suffix(".tmp").write_text(json.dumps({"pid": process.pid, "url": piece.url, "log": str(log),
                                                      "command": piece.command, "code_version": code_version()}))
    record.with_suffix(".tmp").replace(record)
    return piece


def _wait(piece: Piece, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        record = records()[piece.name]
        if not _alive(record["pid"]) or _exited_once(Path(record["log"])) or time.monotonic() > deadline:
            raise PipelineError(f"{piece.name} did not start: {redact(_last_line(Path(record['log'])))} "
                                f"(log: {record['log']})")
        time.sleep(0.5)


def _wait_for_workers(names: set[str], timeout: float = 120.0) -> None:
    """Until every worker answers a ping through the broker: then it consumes its queue."""
    app, deadline = worker_app(), time.monotonic() + timeout
    while True:
        answered = {name.split("@")[0] + "@" for reply in app.control.ping(timeout=1.0) for name in reply}
        if names <= answered:
            return
        if time.monotonic() > deadline:
            raise PipelineError(f"workers did not answer through {redact(os.environ[BROKER_ENV])}: "
                                f"{', '.join(sorted(names - answered))}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


RESTART_MARK = "supervise: "  # the restarter's line when its program stopped (flower_pipeline/scaleout/supervisor.py)


def _exited_once(log: Path) -> bool:
    """Whether the program stopped since this start of its restarter (a bad setting: it would only loop)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return RESTART_MARK in text[text.rfind(START_MARK):]


def _last_line(log: Path) -> str:
    """The program's last line before its restarter's, if any."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [line for line in text[text.rfind(START_MARK):].splitlines()
             if line.strip() and not line.startswith((RESTART_MARK, START_MARK))]
    return lines[-1].strip()[:300] if lines else "no output"

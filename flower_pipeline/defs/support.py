"""Helpers the assets share: user-facing failures, progress, pictures in metadata."""


import base64
import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import dagster as dg
from tqdm import tqdm

from flower_pipeline.errors import PipelineError
from flower_pipeline.tracking import MlflowTracker, mlflow_errors


@contextlib.contextmanager
def user_errors(store: MlflowTracker | None = None) -> Iterator[None]:
    """Report bad input, and failures of the MLflow store when given, as a Dagster Failure carrying the
    one-line message."""
    try:
        with mlflow_errors(store) if store is not None else contextlib.nullcontext():
            yield
    except PipelineError as err:
        raise dg.Failure(description=str(err)) from None


@contextlib.contextmanager
def progress(context: dg.AssetExecutionContext, label: str, unit: str = "it",
             scale: float = 1.0) -> Iterator[Callable[[int, int | None], None]]:
    """A callback(done, total) that logs each 10% to Dagster and draws a terminal bar.

    The bar only appears on an interactive terminal (the CLI); Dagster's log gets
    the same progress wherever the run happens.
    """
    bar = tqdm(desc=label, unit=unit, unit_scale=scale != 1.0, disable=None, leave=False)
    state = {"logged": -1, "started": time.perf_counter()}

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        tenth = int(10 * done / total) if total else done // (10 << 20)
        if tenth != state["logged"]:
            state["logged"] = tenth
            rate = done / max(time.perf_counter() - state["started"], 1e-9)
            of = f"/{total:,}" if total else ""
            context.log.info(f"{label}: {done:,}{of} {unit} ({rate:,.0f} {unit}/s)")

    try:
        yield update
    finally:
        bar.close()


def image_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the Dagster UI's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def mlflow_link(tracker: MlflowTracker, run_id: str | None = None, model: str | None = None,
                version: int | None = None, logged_model: str | None = None) -> dg.MetadataValue | str:
    """A run, model version or logged model: a clickable link into the MLflow UI."""
    target = tracker.link(run_id, model, version, logged_model)
    return dg.MetadataValue.url(target) if target.startswith(("http://", "https://")) else target


def table(rows: dict[str, float]) -> dg.MetadataValue:
    """Metric name → value as a Dagster table with a schema (metric, title, value, better), which the UI shows
    sortable."""
    from flower_pipeline.metrics import BY_NAME

    schema = dg.TableSchema(columns=[
        dg.TableColumn("metric", "string", description="the metric's name (MLflow key eval_<metric>)"),
        dg.TableColumn("title", "string"), dg.TableColumn("value", "float"),
        dg.TableColumn("better", "string", description="lower, higher, 0.5, or blank where neither")])
    return dg.MetadataValue.table(
        [dg.TableRecord({"metric": name, "title": BY_NAME[name].title if name in BY_NAME else name,
                         "value": float(value), "better": (BY_NAME[name].better or "") if name in BY_NAME else ""})
         for name, value in rows.items()], schema=schema)


def rows_table(rows: list[dict[str, str | float]]) -> dg.MetadataValue:
    """One row per item (a sweep's seeds), the columns the rows' keys: numbers as floats, the rest as text."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    kinds = {c: "float" if all(isinstance(r.get(c), float | int) for r in rows) else "string" for c in columns}
    schema = dg.TableSchema(columns=[dg.TableColumn(c, kinds[c]) for c in columns])
    return dg.MetadataValue.table([dg.TableRecord({c: float(r[c]) if kinds[c] == "float" else str(r.get(c, ""))
                                                   for c in columns}) for r in rows], schema=schema)


def step_log(context: dg.AssetExecutionContext) -> Callable[[str], None]:
    """The step's log lines: into Dagster's event log and, on a Celery worker, into the step's captured stderr
    too, which the UI shows for a step that ran on any host (command-line runs keep the console logger quiet)."""
    from celery import current_task

    if not (current_task and current_task.request.id):
        return context.log.info

    def log(line: str) -> None:
        context.log.info(line)
        print(line, file=sys.stderr, flush=True)

    return log

"""The records the pipeline stores between stages, and the only types a stored record may decode into.

A record file names its type (`module:Class`); the name is looked up in this table, never imported, so a
record cannot make the pipeline call anything. Records stored by earlier versions name their classes by their
module paths then: RECORD_ALIASES maps those names here, so every record ever written still loads. Decoding
checks every field's type, and every `DataPath` (what the pipeline made) must resolve inside the data root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flower_pipeline.errors import PipelineError
from flower_pipeline.feature_network import FeatureNetworkRef
from flower_pipeline.ingest import ExtractedImages, ResizedImages, TensorCacheRef
from flower_pipeline.registry import RegisteredVersion
from flower_pipeline.runs import Evaluation, TrainedRun
from flower_pipeline.sources import RawArchive
from flower_pipeline.storage import atomic_write_json, decode_record, encode_record, read_json
from flower_pipeline.study import StudyReport, StudyRunResult

STORED = (RawArchive, ExtractedImages, ResizedImages, TensorCacheRef, FeatureNetworkRef, TrainedRun, Evaluation,
          RegisteredVersion, StudyRunResult, StudyReport)


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


RECORD_TYPES: dict[str, type] = {type_name(cls): cls for cls in STORED}
RECORD_ALIASES: dict[str, type] = {  # names written by earlier versions → the class now
    "flower_pipeline.ingest:RawArchive": RawArchive,
    "flower_pipeline.defs.training:TrainedRun": TrainedRun,
    "flower_pipeline.defs.evaluation:Evaluation": Evaluation,
    "flower_pipeline.defs.features:FeatureNetworkRef": FeatureNetworkRef,
    "flower_pipeline.defs.study:StudyRunResult": StudyRunResult,
    "flower_pipeline.defs.study:StudyReport": StudyReport,
}


def write_record(path: Path, record: Any) -> Path:
    """A record as JSON (atomically): only a registered type is stored."""
    if type(record) not in STORED:
        raise PipelineError(f"{type(record).__qualname__} is not a stored record type (records.STORED)")
    return atomic_write_json(path, {"type": type_name(type(record)), "value": encode_record(record)})


def read_record(path: Path, root: Path) -> Any:
    """The record in `path`, or a one-line error naming the file: at most 1 MiB, a registered type, every field
    of its declared type, every path the pipeline made inside `root`."""
    stored = read_json(path, "stage record")
    name = stored.get("type") if isinstance(stored, dict) else None
    cls = RECORD_TYPES.get(name) or RECORD_ALIASES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise PipelineError(f"stage record {path} names {str(name)[:100]!r}, which is not one of the pipeline's "
                            "record types; it is refused")
    try:
        return decode_record(cls, stored.get("value"), root)
    except (ValueError, RecursionError) as err:
        raise PipelineError(f"stage record {path} is refused: {str(err)[:300]}") from None

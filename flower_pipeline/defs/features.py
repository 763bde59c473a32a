"""The feature network asset: each variant's own flower classifier, the space of the offline quality measure."""

from dataclasses import dataclass

import dagster as dg

from flower_pipeline.errors import PipelineError
from flower_pipeline.features import FeatureSettings, network_id, train_feature_network
from flower_pipeline.ingest import TensorCacheRef
from flower_pipeline.scaleout import GPU_STEP
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import pick_device

from .config import DEVICE_FIELD, code_version, config_class, settings_from
from .ingest import OWNERS
from .partitions import variant_partitions
from .resources import FlowerStorage
from .support import user_errors


@dataclass(frozen=True)
class FeatureNetworkRef:
    variant: str
    network_id: str  # cache content × settings: measures compare only under the same id
    path: str | None  # model.pt, or None where the variant cannot have one
    unavailable: str | None  # why not
    accuracy: float | None  # on the held-out images
    train_accuracy: float | None
    classes: int
    seconds: float
    reused: bool


FeatureNetworkConfig = config_class("FeatureNetworkConfig", FeatureSettings, device=DEVICE_FIELD)


@dg.asset(partitions_def=variant_partitions, group_name="evaluation", kinds={"pytorch"}, owners=OWNERS,
          code_version=code_version(FeatureSettings), pool="gpu", op_tags=GPU_STEP)
def feature_network(context: dg.AssetExecutionContext, config: FeatureNetworkConfig, tensor_cache: TensorCacheRef,
                    storage: FlowerStorage) -> FeatureNetworkRef:
    """A small CNN trained to tell the variant's classes apart; its features measure generated images offline."""
    with user_errors():
        settings = settings_from(config, FeatureSettings)
        cache = TensorCache.load(tensor_cache.path)
        identity = network_id(cache, settings)
        out_dir = storage.root / tensor_cache.variant.rsplit("-", 2)[0] / "features" / identity
        try:
            result = train_feature_network(cache, settings, out_dir, device=pick_device(config.device),
                                           log=context.log.info)
        except PipelineError as err:  # e.g. a collection without classes: reported, evaluation says why
            context.log.warning(f"no feature network for {tensor_cache.variant}: {err}")
            context.add_output_metadata({"unavailable": str(err)})
            return FeatureNetworkRef(tensor_cache.variant, identity, None, str(err), None, None, 0, 0.0, False)
    context.add_output_metadata({
        "held_out_accuracy": round(result.accuracy, 4), "train_accuracy": round(result.train_accuracy, 4),
        "classes": result.classes, "chance": round(1 / result.classes, 4), "seconds": round(result.seconds, 1),
        "reused": result.reused, "network_id": identity, "path": dg.MetadataValue.path(str(result.path)),
    })
    return FeatureNetworkRef(tensor_cache.variant, identity, str(result.path), None, result.accuracy,
                             result.train_accuracy, result.classes, result.seconds, result.reused)

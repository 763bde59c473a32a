"""Partitions: one per dataset, and dataset × architecture for training."""

import dagster as dg

from flower_pipeline.catalog import DATASET_NAMES
from flower_pipeline.models import ARCHITECTURES

dataset_partitions = dg.StaticPartitionsDefinition(list(DATASET_NAMES))

arch_partitions = dg.StaticPartitionsDefinition(list(ARCHITECTURES))
training_partitions = dg.MultiPartitionsDefinition({"dataset": dataset_partitions, "arch": arch_partitions})


def training_partition_key(dataset: str, arch: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset, "arch": arch})


def dataset_and_arch(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """The (dataset, architecture) of a training-partitioned run."""
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], keys["arch"]

"""Partitions: one per dataset, and dataset × architecture for training."""

import dagster as dg

from flower_pipeline.catalog import DATASET_NAMES

dataset_partitions = dg.StaticPartitionsDefinition(list(DATASET_NAMES))

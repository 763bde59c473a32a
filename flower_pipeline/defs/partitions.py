"""Partitions: a dataset (download, extraction), a variant (resize, tensor cache) and variant × architecture.

Datasets and variants are dynamic: `flower-pipeline prepare` adds them, and so
can a person in the UI (an asset's Partitions tab, "Add partition").
"""

import dagster as dg

from flower_pipeline.catalog import Variant
from flower_pipeline.errors import PipelineError
from flower_pipeline.models import ARCHITECTURES

dataset_partitions = dg.DynamicPartitionsDefinition(name="datasets")
variant_partitions = dg.DynamicPartitionsDefinition(name="variants")
arch_partitions = dg.StaticPartitionsDefinition(list(ARCHITECTURES))
training_partitions = dg.MultiPartitionsDefinition({"variant": variant_partitions, "arch": arch_partitions})


def training_key(variant: str, arch: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"variant": variant, "arch": arch})


def variant_and_arch(partition_key: str) -> tuple[str, str]:
    """The (variant, architecture) of a training partition key, "arch1|flowers17-color-64"."""
    arch, variant = str(partition_key).split("|")  # dimensions in name order; "|" never occurs in a variant
    return variant, arch


def add_variant(instance: dg.DagsterInstance, variant: Variant) -> None:
    """Register the variant and its dataset as partitions (idempotent)."""
    for name, partitions in ((variant.dataset, dataset_partitions), (variant.name, variant_partitions)):
        if not instance.has_dynamic_partition(partitions.name, name):
            instance.add_dynamic_partitions(partitions.name, [name])


def known_variants(instance: dg.DagsterInstance) -> list[str]:
    return sorted(instance.get_dynamic_partitions(variant_partitions.name))


def existing_variant(instance: dg.DagsterInstance, name: str) -> Variant:
    """A prepared variant by name; a clear error lists the existing ones."""
    if name not in known_variants(instance):
        listed = ", ".join(known_variants(instance)) or "none (prepare one first)"
        raise PipelineError(f"unknown variant {name!r}; variants: {listed}")
    return Variant.parse(name)

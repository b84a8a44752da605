"""Data sets, readers and partitions."""

from rvepfl.data.datasets import Dataset, load_dataset, subset_dataset, to_tensor
from rvepfl.data.partition import ClientSplit, Partition, make_partition, partition_indices

__all__ = [
    "ClientSplit",
    "Dataset",
    "Partition",
    "load_dataset",
    "make_partition",
    "partition_indices",
    "subset_dataset",
    "to_tensor",
]

"""Sample generation, ROOT schemas, streaming datasets and the Lightning data module."""

from softsymlit.data.datamodule import JetDataModule
from softsymlit.data.dataset import DataError, JetStream, expand_files, pad_constituents, partition
from softsymlit.data.schemas import ATLAS, JETCLASS, SCHEMAS, Schema, resolve_schema

__all__ = [
    "ATLAS",
    "JETCLASS",
    "SCHEMAS",
    "DataError",
    "JetDataModule",
    "JetStream",
    "Schema",
    "expand_files",
    "pad_constituents",
    "partition",
    "resolve_schema",
]

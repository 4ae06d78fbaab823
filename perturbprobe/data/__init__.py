"""Datasets, built-in datasets, generation, graders and records."""

from .builtin import builtin_names
from .collect import COLLECT_SOURCES, accuracy_table, collect
from .generation import generate_responses
from .graders import GRADERS, normalize_answer, register_grader
from .loaders import FORMATS, Dataset, load_dataset
from .multiple_choice import to_multiple_choice
from .records import Record, pair_record, read_records, write_records
from .schema import Example
from .self_consistency import SelfConsistency, self_consistency, self_consistency_confidence

__all__ = [
    "COLLECT_SOURCES",
    "FORMATS",
    "GRADERS",
    "Dataset",
    "Example",
    "Record",
    "SelfConsistency",
    "accuracy_table",
    "builtin_names",
    "collect",
    "generate_responses",
    "load_dataset",
    "normalize_answer",
    "pair_record",
    "read_records",
    "register_grader",
    "self_consistency",
    "self_consistency_confidence",
    "to_multiple_choice",
    "write_records",
]

"""Datasets, built-in datasets, graders, records and question splits: what is stored and
graded, never a model run (answering a dataset is :func:`perturbprobe.decoding.collect`)."""

from .._deprecated import moved_names
from .builtin import builtin_names
from .graders import GRADERS, normalize_answer, register_grader
from .loaders import FORMATS, Dataset, load_dataset
from .multiple_choice import to_multiple_choice
from .records import Record, accuracy_table, pair_record, read_records, write_records
from .schema import Example
from .splits import QuestionSplit, split_by_question

__all__ = [
    "FORMATS",
    "GRADERS",
    "Dataset",
    "Example",
    "QuestionSplit",
    "Record",
    "accuracy_table",
    "builtin_names",
    "load_dataset",
    "normalize_answer",
    "pair_record",
    "read_records",
    "register_grader",
    "split_by_question",
    "to_multiple_choice",
    "write_records",
]

__getattr__ = moved_names(__name__)  # names moved in 0.2, with a DeprecationWarning

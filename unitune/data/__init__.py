"""Instruction data: readers.py (json/jsonl/csv/parquet, record by record) -> schema.py (check and normalize)
-> encoding.py (THE encoding) -> dataset.py (Arrow, num_proc, fingerprint cache, streaming) -> collators.py.

Everything other modules import from `unitune.data` is re-exported here.
"""

from unitune.data.collators import Collator, pad_right
from unitune.data.dataset import CACHE_VERSION, Tokenized, load_records, prepare, split, stream
from unitune.data.encoding import encode, encode_batch, tokenizer_fingerprint
from unitune.data.readers import READERS, iter_raw, read_records, read_text
from unitune.data.schema import _ROLE, load_datasets, load_file, normalize, normalize_raw
from unitune.dataset_registry import eval_files, registry, resolve, resolve_all

__all__ = [
           "CACHE_VERSION",
           "READERS",
           "_ROLE",
           "Collator",
           "Tokenized",
           "encode",
           "encode_batch",
           "eval_files",
           "iter_raw",
           "load_datasets",
           "load_file",
           "load_records",
           "normalize",
           "normalize_raw",
           "pad_right",
           "prepare",
           "read_records",
           "read_text",
           "registry",
           "resolve",
           "resolve_all",
           "split",
           "stream",
           "tokenizer_fingerprint",
]

"""Data layer: records, readers and writers, SFT formats, chunking and crash-safe file helpers.

Everything that touches a file in ``equal`` goes through this package (or ``equal.pipeline``).
"""

from equal.data.chunking import approx_token_count, chunk_documents, chunk_spans, chunk_text
from equal.data.decontam import NGramIndex, normalize_words
from equal.data.dedup import exact_dedup, near_dedup, semantic_dedup
from equal.data.io import (
    append_jsonl,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    load_npy,
    read_jsonl,
    save_npy,
)
from equal.data.qa import QAPair, qa_id
from equal.data.readers import DocumentStream, iter_documents, read_documents
from equal.data.records import MAX_ERRORS, Document, ReadResult, SFTReadResult, Skips, content_hash, derived_id
from equal.data.sft import (
    FORMATS,
    SFTFormat,
    detect_format,
    from_messages,
    read_sft,
    render_text,
    to_messages,
    write_sft,
)

__all__ = [
    "FORMATS",
    "MAX_ERRORS",
    "Document",
    "DocumentStream",
    "NGramIndex",
    "QAPair",
    "ReadResult",
    "SFTFormat",
    "SFTReadResult",
    "Skips",
    "append_jsonl",
    "approx_token_count",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "chunk_documents",
    "chunk_spans",
    "chunk_text",
    "content_hash",
    "derived_id",
    "detect_format",
    "exact_dedup",
    "from_messages",
    "iter_documents",
    "iter_jsonl",
    "load_npy",
    "near_dedup",
    "normalize_words",
    "qa_id",
    "read_documents",
    "read_jsonl",
    "read_sft",
    "render_text",
    "save_npy",
    "semantic_dedup",
    "to_messages",
    "write_sft",
]

"""Hugging Face folders written atomically: ``datasets.save_to_disk`` and the Hub layout with a dataset card.

Reading them is :mod:`equal.data._sources` (``iter_files`` recognises both layouts). A folder is written
under a temporary name beside its destination (``.NAME.<12 hex>.tmp``, which
:func:`equal.runlock.remove_stale_temps` knows) and renamed into place only when complete, so an
interrupted export never leaves half a dataset where a whole one is expected.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from equal.data._sources import hf_layout
from equal.errors import DataError

__all__ = ["HUB_DATA_FILE", "save_to_disk", "write_folder"]

#: Where the Hub layout keeps the one data file of an export (the name the Hub itself gives a single shard).
HUB_DATA_FILE = "data/train-00000-of-00001.parquet"


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' own tqdm bars ("Saving the dataset", "Map") off while it works for us; restored after."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def write_folder(out: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp)`` in a temporary sibling, then move it to ``out`` in one rename.

    ``out`` may be missing, an empty folder, or a Hugging Face folder an earlier export wrote (it is
    replaced); anything else (a file, a folder holding other data) is refused, so an export never
    deletes what it did not write.
    """
    target = Path(out)
    if target.exists():
        if not target.is_dir():
            raise DataError("exists and is a file; a Hugging Face dataset is a folder", path=str(target))
        if any(target.iterdir()) and hf_layout(target) is None:
            raise DataError("exists and holds files that are not a Hugging Face dataset; choose another --out",
                            path=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    old = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        tmp.mkdir()
        fill(tmp)
        if target.exists():
            os.replace(target, old)  # a folder cannot be renamed over a non-empty one: move it aside first
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_to_disk(out: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> int:
    """Write ``records`` as a ``datasets.Dataset`` with ``save_to_disk`` (``load_from_disk(out)`` reads it).

    Parameters
    ----------
    out : str or os.PathLike
        Destination folder (see :func:`write_folder` for what may already be there).
    records : sequence of dict
        JSON-like records; the columns are the union of their keys (missing ones are null).

    Returns
    -------
    int
        Number of rows written.

    Raises
    ------
    DataError
        ``out`` is a file or a folder of other data, or the records do not fit one Arrow schema.
    """
    try:
        import datasets
        import pyarrow as pa
    except ImportError as exc:  # pragma: no cover - datasets comes with the train extra
        raise ImportError("writing a save_to_disk folder needs datasets: pip install 'equal[train]'") from exc
    keys: dict[str, None] = {}
    for rec in records:
        keys.update(dict.fromkeys(rec))
    try:
        table = pa.table({k: pa.array([rec.get(k) for rec in records]) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"cannot be written as a Hugging Face dataset: {exc}", path=str(out)) from None

    def fill(tmp: Path) -> None:
        with _quiet_datasets():
            datasets.Dataset(table).save_to_disk(str(tmp))

    write_folder(out, fill)
    return len(records)

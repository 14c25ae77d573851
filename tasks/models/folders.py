"""Model folders on disk: checked before reading, written atomically.

A rollout engine or trainer may look at a model folder at any moment, so a folder is built in a
hidden sibling and renamed into place at the end: readers see either nothing or a whole model.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def require_model_folder(model_dir: str | os.PathLike) -> Path:
    """Return `model_dir` as a Path if it holds a Hugging Face model (a config.json), else raise."""
    path = Path(model_dir)
    if not path.exists():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"model folder {path} is a file, not a folder")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model folder {path} has no config.json: not a Hugging Face model folder "
            f"(build one with `dartflow model tiny DIR` or `dartflow model smollm2 DIR`)"
        )
    return path


def check_destination(out_dir: Path, *, overwrite: bool) -> None:
    """Raise if writing a model to `out_dir` would clobber something the caller did not give up."""
    if out_dir.is_file():
        raise FileExistsError(f"cannot write a model folder to {out_dir}: it is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"model folder {out_dir} already exists and is not empty; "
            f"pass overwrite=True (CLI: --overwrite) to replace it"
        )


@contextmanager
def atomic_model_folder(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds it becomes `out_dir` by rename.

    On any error the staging folder is removed and `out_dir` is left as it was. With
    `overwrite=True` an existing `out_dir` is replaced (moved aside, then deleted).
    """
    out_dir = Path(out_dir).absolute()
    check_destination(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one filesystem and is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; a model folder is meant to be shared
        move_into_place(staging, out_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def move_into_place(staging: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Rename `staging` to `out_dir`; an existing non-empty `out_dir` only goes if `overwrite`."""
    check_destination(out_dir, overwrite=overwrite)  # again: the build may have taken minutes
    if not out_dir.exists() or not any(out_dir.iterdir()):
        os.replace(staging, out_dir)  # rename(2) replaces an empty folder in one step
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, retired / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)

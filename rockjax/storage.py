"""Local and cloud paths (gs://, s3://) for the workdir and model directories, via etils.epath.

Every byte rockjax writes to a workdir, and every file it reads from one, goes through
`epath.Path`, which hands `gs://` and `s3://` paths to fsspec (gcsfs / s3fs, the `gcs` / `s3`
extras). Libraries that only read or write local files (transformers' tokenizer and config
I/O, safetensors, tensorboardX without its cloud SDKs) get a local directory: `staged_dir`
writes into a temporary local directory and uploads it when done; `local_copy` downloads a
cloud directory into a temporary one for as long as a load needs it. Checkpoints go through orbax, whose array store (TensorStore)
writes local paths and `gs://` only.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import tempfile
from collections.abc import Iterator, Sequence

from etils import epath

from rockjax import errors

# Cloud schemes orbax/TensorStore can hold checkpoints in (besides local paths).
CHECKPOINT_SCHEMES = ("gs",)


def scheme(path: str | os.PathLike) -> str | None:
  """'gs' for 'gs://bucket/x', None for a local path."""
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else None


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
  return scheme(path) is not None


def resolve(path: str | os.PathLike) -> epath.Path:
  """An epath.Path: a URL as it is, a local path made absolute (orbax needs absolute paths)."""
  return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


def check_checkpoint_dir(path: str | os.PathLike, *, field: str = "--workdir") -> None:
  """A one-line WorkdirError unless orbax can keep checkpoints at `path` (local or gs://)."""
  s = scheme(path)
  if s is not None and s not in CHECKPOINT_SCHEMES:
    raise errors.WorkdirError(
      f"{field}={os.fspath(path)}: checkpoints (orbax/TensorStore) can be written to a local "
      f"path or gs:// only, not {s}://; mount the bucket (e.g. mountpoint-s3) and pass the "
      f"mount point"
    )


def is_disk_full(err: BaseException) -> bool:
  """Whether `err`, or an error it was raised from, is ENOSPC ("No space left on device").

  orbax raises the writer thread's error wrapped in its own; TensorStore reports the OS error
  by its text only, so the text counts too.
  """
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if os.strerror(errno.ENOSPC).lower() in str(err).lower():
      return True
    err = err.__cause__ or err.__context__
  return False


def _files(root: epath.Path, prefix: str = "") -> Iterator[str]:
  """Relative paths of every file under `root` (by listing, which works on every backend)."""
  for child in root.iterdir():
    rel = f"{prefix}{child.name}"
    if child.is_dir():
      yield from _files(child, rel + "/")
    else:
      yield rel


def copy_tree(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  *,
  include: Sequence[str] = ("*",),
  exclude: Sequence[str] = (),
) -> None:
  """Copy the files under `src` whose names match `include` and not `exclude` to `dst`."""
  src, dst = epath.Path(src), epath.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for rel in _files(src):
    name = os.path.basename(rel)
    if not any(fnmatch.fnmatch(name, p) for p in include) or any(
      fnmatch.fnmatch(name, p) for p in exclude
    ):
      continue
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    (src / rel).copy(dst / rel, overwrite=True)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[str]:
  """A local directory to write `path`'s files into.

  For a local `path`, the directory itself (created). For a URL, a temporary local directory
  whose files are uploaded to `path` when the block ends without an error, then deleted.
  """
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory(prefix="rockjax-upload-") as local:
    yield local
    copy_tree(local, path)


@contextlib.contextmanager
def local_copy(
  path: str | os.PathLike, *, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> Iterator[str]:
  """A local directory holding `path`'s files (those matching `include` and not `exclude`).

  A local `path` is used as it is. A URL's files are downloaded into a temporary directory
  that is deleted when the block ends: read everything you need inside it.
  """
  if not is_remote(path):
    yield os.fspath(path)
    return
  if not epath.Path(path).is_dir():
    raise FileNotFoundError(f"{os.fspath(path)}: no such directory")
  with tempfile.TemporaryDirectory(prefix="rockjax-download-") as local:
    copy_tree(path, local, include=include, exclude=exclude)
    yield local

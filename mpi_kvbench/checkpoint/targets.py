"""Where a checkpoint goes: a file (O_DIRECT, or buffered with an fadvise mode) or an S3
object (one multipart upload), behind one interface: ``write`` streams the chunks and
returns once they are durable, ``open_reader`` streams them back, ``remove`` deletes what
was made (and nothing else)."""

from __future__ import annotations

import abc
import errno
import os
import warnings
from collections.abc import Iterator
from typing import Any

from mpi_kvbench.checkpoint.settings import CheckpointSettings
from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.registry import TIERS
from mpi_kvbench.tiers.s3 import read_fully
from mpi_kvbench.tiers.storage import make_dirs, remove_dirs


class Target(abc.ABC):
    @abc.abstractmethod
    def write(self, chunks: Iterator[memoryview]) -> int:
        """Writes every chunk in order; returns bytes written once they are durable."""

    @abc.abstractmethod
    def read_into(self, out: memoryview) -> int:
        """The next ``len(out)`` bytes of the checkpoint (sequential restore)."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Deletes the checkpoint; safe to call twice."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Facts for the result: where, how."""


class FileTarget(Target):
    """One file per rank. O_DIRECT when the file system allows it (else a warning and
    buffered I/O); buffered I/O applies the fadvise mode: ``sequential`` says so at open,
    ``dontneed`` drops each written (and each read) range from the page cache so the
    cache does not grow with the checkpoint, and makes the restore read the device."""

    def __init__(self, s: CheckpointSettings, ctx: RankContext) -> None:
        base = ctx.expand(s.path) if s.path else ctx.scratch_dir()
        try:
            self.made = make_dirs(base)
        except OSError as exc:
            raise ConfigError(f"checkpoint.path: cannot create {base} ({exc.strerror});"
                              " choose a writable directory") from None
        self.path = os.path.join(base, f"checkpoint-{ctx.run_id}-rank{ctx.rank}.bin")
        self.fadvise = s.fadvise
        self.direct = s.direct
        self.own_scratch = not s.path
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        if self.direct and not self._try_direct():
            warnings.warn(f"{self.path}: the file system refuses O_DIRECT; the checkpoint is"
                          " written buffered and the result says direct: false", stacklevel=2)
            self.direct = False
        self.offset = 0

    def _try_direct(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_DIRECT)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise
        os.close(self.fd)
        self.fd = fd
        return True

    def _advise(self, offset: int, length: int, advice: int) -> None:
        if not self.direct:
            os.posix_fadvise(self.fd, offset, length, advice)

    def write(self, chunks: Iterator[memoryview]) -> int:
        if self.fadvise == "sequential":
            self._advise(0, 0, os.POSIX_FADV_SEQUENTIAL)
        off = 0
        for chunk in chunks:
            done = 0
            while done < len(chunk):
                done += os.pwritev(self.fd, [chunk[done:]], off + done)
            if self.fadvise == "dontneed":   # starts write-back, drops what is clean
                self._advise(off, len(chunk), os.POSIX_FADV_DONTNEED)
            off += len(chunk)
        os.fsync(self.fd)                    # durable before the clock stops
        if self.fadvise == "dontneed":
            self._advise(0, 0, os.POSIX_FADV_DONTNEED)
        return off

    def read_into(self, out: memoryview) -> int:
        if self.offset == 0 and self.fadvise == "sequential":
            self._advise(0, 0, os.POSIX_FADV_SEQUENTIAL)
        done = 0
        while done < len(out):
            got = os.preadv(self.fd, [out[done:]], self.offset + done)
            if got == 0:
                break
            done += got
        if self.fadvise == "dontneed":
            self._advise(self.offset, done, os.POSIX_FADV_DONTNEED)
        self.offset += done
        return done

    def remove(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            os.unlink(self.path)
            remove_dirs(self.made)
            if self.own_scratch:   # the run's own scratch root: whoever is last removes it
                remove_dirs([os.path.dirname(os.path.dirname(self.path))])

    def info(self) -> dict[str, Any]:
        return {"target": "file", "path": self.path, "direct": self.direct, "fadvise": self.fadvise}


class S3Target(Target):
    """One object per rank, uploaded in parts as the chunks come (multipart), read back
    as one streamed GET. Built on the object tier, so endpoints, credentials, the
    foreign-prefix refusal and the clean-up are the tier's."""

    def __init__(self, s: CheckpointSettings, ctx: RankContext, size_bytes: int) -> None:
        cls = TIERS.load("s3")
        params = TIERS.params("s3", {"part_size_mb": s.chunk_mb, **s.s3}, "checkpoint.s3")
        self.tier = cls(params, size_bytes, size_bytes, level="object")
        self.tier.open(ctx)
        self.key = f"{self.tier.rank_prefix}checkpoint.bin"
        self.bucket = params.bucket
        self._stream = None

    def write(self, chunks: Iterator[memoryview]) -> int:
        return self.tier.client.put_stream(self.bucket, self.key, chunks)

    def read_into(self, out: memoryview) -> int:
        if self._stream is None:
            self._stream = self.tier.client.get_stream(self.bucket, self.key)
        return read_fully(self._stream, out)

    def remove(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.tier.close()

    def info(self) -> dict[str, Any]:
        t = self.tier.info()
        return {"target": "s3", "key": self.key, **{k: t[k] for k in (
            "library", "bucket", "endpoint", "endpoints", "endpoint_source", "region",
            "part_size_bytes")}}

"""Whether a warm-start zygote still matches the worker's configuration and the code on disk.

A zygote is a snapshot of the moment it imported: the interpreter binary, the
modules the operator listed (``--preload``), the environment it imported them
under (Prefect reads its settings at import), and the source files of every
module it imported. A run forked from it runs that snapshot, not what is on
disk now. So that a deploy (a ``pip install -U`` in the worker's venv, a new
version of a preloaded module, a changed ``--preload``) reaches the next run
as it would a cold start, the worker compares the snapshot with the present
before each fork (:meth:`ImageCheck.changed`) and, on any difference, retires
the zygote and starts a fresh one.

What is compared, and why that is enough:

- the preload list and a digest of the worker's ``os.environ`` (what the
  zygote was started with);
- the interpreter: device, inode, size and mtime of ``sys.executable``
  (resolved), which an upgrade replaces;
- every imported module's file outside the standard library (which only
  changes with the interpreter), by size and mtime in nanoseconds, as the
  zygote saw them right after importing. Python's own bytecode cache checks
  the same two (in whole seconds), so an edit it would notice, this notices.

Not compared: modules the zygote never imported (a run imports those fresh
from disk anyway) and files added beside them that would change how an
import resolves.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence

import attrs
import trio

from trio_worker._core._settings import process_environment

__all__ = ["ImageCheck", "ZygoteImage", "environ_digest", "executable_identity"]

#: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of a file; ``None`` if it cannot be read.
FileIdentity = tuple[int, int, int, int] | None
#: How a source file looked to the zygote: ``(st_size, st_mtime_ns)``.
SourceStamp = tuple[int, int]


def environ_digest(environ: Mapping[str, str]) -> str:
    """A digest of an environment (compared, never logged: it may hold secrets)."""
    encoded = json.dumps(sorted(environ.items())).encode("utf-8", "surrogateescape")
    return hashlib.sha256(encoded).hexdigest()


def executable_identity(path: str = sys.executable) -> FileIdentity:
    """Identify the interpreter binary that ``path`` resolves to now."""
    try:
        st = os.stat(os.path.realpath(path))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@attrs.frozen
class ZygoteImage:
    """What one zygote was made from.

    Attributes:
        preload: the operator's modules it was started with.
        environ: the digest of the environment it was started with.
        executable: the interpreter binary it was started from.
        sources: each imported module's source file, as the zygote saw it.
    """

    preload: tuple[str, ...]
    environ: str
    executable: FileIdentity
    sources: Mapping[str, SourceStamp] = attrs.field(factory=dict)

    def with_sources(self, reported: object) -> ZygoteImage:
        """This image with the zygote's ``ready`` report of its sources (malformed: none)."""
        sources: dict[str, SourceStamp] = {}
        if isinstance(reported, list):
            for entry in reported:
                if isinstance(entry, list) and len(entry) == 3:
                    path, size, mtime_ns = entry
                    sources[str(path)] = (int(size), int(mtime_ns))
        return attrs.evolve(self, sources=sources)

    def difference(self, preload: Sequence[str], environ: str) -> str | None:
        """What has changed since the zygote was made, or ``None``; reads the disk."""
        if tuple(preload) != self.preload:
            return "the preload list changed"
        if environ != self.environ:
            return "the worker's environment changed"
        if executable_identity() != self.executable:
            return f"the interpreter {sys.executable} changed"
        for path, stamp in self.sources.items():
            try:
                st = os.stat(path)
            except OSError:
                return f"{path} is gone"
            if (st.st_size, st.st_mtime_ns) != stamp:
                return f"{path} changed"
        return None


@attrs.define(eq=False)
class ImageCheck:
    """Compares one zygote's image with the present, one check serving a burst of forks.

    Stat-ing every source file takes a few milliseconds, so it runs in a
    thread; the forks that arrive while a check runs share the next one (a
    check that began after a fork was asked for answers for it), and once a
    difference is found it stays found.
    """

    image: ZygoteImage
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _begun: int = 0
    _found: str | None = None

    async def changed(self, preload: Sequence[str]) -> str | None:
        """What makes this zygote out of date, or ``None`` when it is current."""
        ticket = self._begun
        async with self._lock:
            if self._found is None and self._begun == ticket:
                self._begun += 1
                environ = environ_digest(process_environment())
                self._found = await trio.to_thread.run_sync(
                    self.image.difference, tuple(preload), environ
                )
            return self._found

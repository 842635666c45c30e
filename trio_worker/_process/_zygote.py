"""The warm-start zygote: a process that has imported the engine and forks flow-run processes.

Started by the worker (``python -m trio_worker._process._zygote FD [module,...]``, see
:mod:`trio_worker._process._warm_start`), it imports the engine, trio_worker's client
and models, Prefect when importable and the operator's ``--preload`` modules, and
does once what each run would otherwise do itself
(:mod:`trio_worker._process._zygote_prepare`); it reports the source files it
imported (``sources``, so that the worker can tell when they change on disk),
says ``ready`` on the unix socket ``FD`` and then serves one request at a time:

- ``spawn`` (with the run's stdin, stdout and stderr as SCM_RIGHTS fds): fork a
  child that makes its own session and process group, applies the run's
  memory ceiling, working directory and environment (``os.environ`` replaced
  entirely), and only then runs the engine; answer ``started`` with its pid,
  or ``failed`` with the reason.
- when a child exits the zygote reaps it (it is the parent) and sends
  ``exited`` with the status, in :func:`subprocess`'s convention (a negative
  number is the signal that killed it).

Why fork is safe here: ``fork()`` copies only the calling thread. A lock held
by any other thread at that instant (the import lock, a logging handler's lock,
malloc's arenas) stays locked for ever in the child. So the zygote never starts
a thread, never runs an event loop (trio's run starts its thread cache and
signal wake-up machinery), and checks that it is the only thread before each
fork; it refuses the request otherwise, and the worker runs the run cold. The
zygote never runs user code: each child runs it and dies with it, so what a
run changes (``os.environ``, ``sys.path``, module globals, the working
directory) dies with the child and the next run forks from the pristine image.

When the worker's end of the socket closes (the worker stopped, or died) the
zygote exits at once without touching its children: like the children of a
cold start they are re-parented to init, and the next worker of the same
name reconciles them by pid.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import resource
import runpy
import selectors
import signal
import socket
import sys
import threading
import traceback
import uuid
import warnings
from collections.abc import Sequence
from typing import Any, Final

from trio_worker._process import _zygote_prepare as zygote_prepare
from trio_worker._process._zygote_prepare import SslContextFor

__all__ = ["MAX_MESSAGE_BYTES", "main"]

#: The largest message (a run's environment is most of it).
MAX_MESSAGE_BYTES: Final = 1 << 20
#: Source files reported per message before ``ready`` (a SOCK_SEQPACKET message must fit
#: in the socket's buffer).
SOURCES_PER_MESSAGE: Final = 400


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _child(
    request: dict[str, Any], fds: list[int], closing: Sequence[int], ssl_for: SslContextFor
) -> int:
    """In the forked child: become the run's process and run the engine; return the exit code."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in closing:
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    limit = request.get("memory_limit_bytes")
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cwd = request["cwd"]
    os.chdir(cwd)
    env: dict[str, str] = request["env"]
    os.environ.clear()
    os.environ.update(env)
    # What ``python -m`` in ``cwd`` with this environment would have on sys.path.
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = [cwd, *extra]
    sys.argv = [request["argv0"]]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    from trio_worker._engine._run import main as engine_main
    from trio_worker._engine._run import prefect_engine_env

    def prefect_here(flow_run_id: uuid.UUID) -> int:
        """Run Prefect's engine in this process, on the Prefect the zygote imported."""
        # The environment a cold start's exec of Prefect's engine gets.
        os.environ.update(prefect_engine_env(flow_run_id, os.environ))
        # Prefect read its settings from the zygote's environment at import.
        prefect_context = sys.modules.get("prefect.context")
        refresh = getattr(prefect_context, "refresh_global_settings_context", None)
        if "prefect.engine" not in sys.modules or refresh is None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", str(flow_run_id)])
        refresh()
        sys.argv = [request["argv0"], str(flow_run_id)]
        with warnings.catch_warnings():
            # runpy warns that the module it runs as __main__ is already imported:
            # that is the point here (its imports are what the zygote shares).
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
            runpy.run_module("prefect.engine", run_name="__main__")
        return 0

    return engine_main([], os.environ, handover=prefect_here, ssl_context_for=ssl_for)


def _fork(
    request: dict[str, Any], fds: list[int], closing: Sequence[int], ssl_for: SslContextFor
) -> int:
    """Fork the run's process; return its pid. The fds are closed here in the parent."""
    try:
        pid = os.fork()
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    if pid == 0:
        code = 1
        try:
            code = _child(request, fds, closing, ssl_for)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                # As the interpreter's own exit does: join non-daemon threads and
                # run threading's exit hooks (Prefect's log and event services
                # drain their queues there), then the atexit functions.
                with contextlib.suppress(Exception):
                    threading._shutdown()  # type: ignore[attr-defined]
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid


def _native_threads() -> int:
    """Threads of this process as the kernel counts them (C extensions' threads included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1  # no /proc: only Python's own count can be checked


def _reap(sock: socket.socket, children: dict[int, int]) -> None:
    """Reap every child that has exited and report it."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        request_id = children.pop(pid, None)
        if request_id is not None:
            code = os.waitstatus_to_exitcode(status)
            _send(sock, {"op": "exited", "id": request_id, "pid": pid, "returncode": code})


def _handle(
    sock: socket.socket, closing: Sequence[int], children: dict[int, int], ssl_for: SslContextFor
) -> bool:
    """Serve one request; False when the worker has gone."""
    try:
        data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE_BYTES, 3)
    except ConnectionResetError:
        return False
    if not data:
        return False
    request = json.loads(data)
    request_id = request["id"]
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "failed", "id": request_id, "error": "expected 3 fds"})
        return True
    if threading.active_count() != 1 or _native_threads() != 1:
        for fd in fds:
            os.close(fd)
        error = "the zygote has threads; forking it is unsafe"
        _send(sock, {"op": "failed", "id": request_id, "error": error})
        return True
    try:
        pid = _fork(request, list(fds), closing, ssl_for)
    except OSError as exc:
        _send(sock, {"op": "failed", "id": request_id, "error": f"fork: {exc.strerror}"})
        return True
    children[pid] = request_id
    _send(sock, {"op": "started", "id": request_id, "pid": pid})
    return True


def serve(sock: socket.socket, preload: Sequence[str]) -> None:
    """Import, say ready, and fork on request until the worker closes its end."""
    sock.set_inheritable(False)
    problems = zygote_prepare.preload(preload)
    zygote_prepare.prepare_converter()
    ssl_for, ssl_files = zygote_prepare.prepare_ssl_context()
    # Move everything imported so far out of the collector's reach: a child's
    # collections would otherwise write to (and so copy) every shared page
    # that holds an object header.
    gc.collect()
    gc.freeze()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    signal.set_wakeup_fd(write_end)
    # A handler (not SIG_DFL) so that SIGCHLD writes to the wake-up fd.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: dict[int, int] = {}
    sources = zygote_prepare.sources(ssl_files)
    for start in range(0, len(sources), SOURCES_PER_MESSAGE):
        _send(sock, {"op": "sources", "files": sources[start : start + SOURCES_PER_MESSAGE]})
    _send(sock, {"op": "ready", "pid": os.getpid(), "problems": problems})
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(read_end, selectors.EVENT_READ)
        while True:
            for key, _events in selector.select():
                if key.fileobj is sock:
                    closing = (sock.fileno(), read_end, write_end)
                    if not _handle(sock, closing, children, ssl_for):
                        return
                else:
                    os.read(read_end, 4096)
            _reap(sock, children)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trio_worker._process._zygote FD [module,...]``."""
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    preload = [m for m in (argv[1] if len(argv) > 1 else "").split(",") if m]
    # The worker closing its end while an answer is being sent: it has gone.
    with contextlib.suppress(BrokenPipeError):
        serve(sock, preload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

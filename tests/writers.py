"""Index runs in processes of their own, to be killed, signalled and raced against: each one forked
from a server process that has torch, torchvision and open_clip imported already (about 4 of the
6 seconds a fresh `python -c` took before its first progress line; the suite starts some twenty).

Only libraries that start no threads of their own at import are preloaded: LanceDB's event-loop
thread and pyarrow's allocator thread would not survive a fork, so each run imports clipsearch,
and with it those, itself. A run is killed, signalled and waited for like a subprocess.Popen.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading

PRELOAD = ["torch", "torchvision", "open_clip"]
_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _main(code: str, argv: list[str], env: dict, cwd: str, out, err) -> None:
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    out.close()
    err.close()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["-c", *argv]
    exec(compile(code, "<writer>", "exec"), {"__name__": "__main__"})
    sys.stdout.flush()


class Run:
    """A forked run, as much of subprocess.Popen as the tests use (text stdout and stderr)."""

    def __init__(self, code: str, argv: list[str], env: dict) -> None:
        ctx = _forkserver()
        (out_r, out_w), (err_r, err_w) = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_main, args=(code, argv, env, os.getcwd(), out_w, err_w),
                                    daemon=True)
        self._process.start()
        out_w.close()
        err_w.close()
        self.pid = self._process.pid
        self.stdout = open(os.dup(out_r.fileno()), encoding="utf-8")  # noqa: SIM115 (closed at exit)
        self.stderr = open(os.dup(err_r.fileno()), encoding="utf-8")  # noqa: SIM115
        out_r.close()
        err_r.close()

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("writer", timeout)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        read: dict[str, str] = {}
        threads = [threading.Thread(target=lambda name=name, f=f: read.__setitem__(name, f.read()),
                                    daemon=True) for name, f in (("out", self.stdout), ("err", self.stderr))]
        for t in threads:
            t.start()
        self.wait(timeout)
        for t in threads:
            t.join(timeout)
        return read.get("out", ""), read.get("err", "")

"""`clipsearch` commands for shell scripts that run many, each a new process forked from one that
has torch, torchvision and open_clip imported already (as writers.py does for the suite's index
runs): most of the 5-8 seconds a fresh `python -c` takes before it does anything.

    python forkcli.py --serve SOCKET &     # the process the commands are forked from
    python forkcli.py SOCKET ARGS...       # `clipsearch ARGS` forked from it: this process's
                                           # stdin, stdout, stderr, folder and environment; its exit code

The client imports nothing heavy. The server answers one command at a time, as a script runs them.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def serve(path: str) -> None:
    from writers import PRELOAD  # this script's folder is on sys.path

    for name in PRELOAD:
        __import__(name)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path + ".tmp")
    server.listen()
    os.rename(path + ".tmp", path)  # there once it answers
    while True:
        conn, _ = server.accept()
        with conn:
            message, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                server.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())


def _child(request: dict, fds: list[int]) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["clipsearch", *request["args"]]
    code = 0
    try:
        from clipsearch.cli.commands import main

        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run(path: str, args: list[str]) -> int:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(path)
        request = {"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        conn.shutdown(socket.SHUT_WR)
        return int(conn.recv(16) or b"1")


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        sys.exit(run(sys.argv[1], sys.argv[2:]))

"""The model's own process: llama.cpp runs here, never in the LSP server.

A native crash (segfault, abort, OOM kill) in llama.cpp then costs the request in flight, not the
language server: the parent (server/engine.py) sees the connection close, answers that request with
nothing, and starts a new worker. Started as `python -m server.worker FD` with FD one end of a
socket pair; messages are pickled tuples (multiprocessing.connection framing):

  parent → worker: ("load", resolved, settings, options) | ("job", Job) | ("abort", job_id) | ("exit",)
  worker → parent: ("loaded", info) | ("load_error", message) | ("result", job_id, Generation|None, cached)

`STROP_FAULT` injects failures for tests (comma-separated): `canary-crash-with-extra-bufts` makes
the canary decode die with SIGSEGV when extra buffer types are on, as llama.cpp's AMX kernels do
on some CPUs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import deque
from multiprocessing.connection import Connection

from core.decode import Decoder, Job, canary
from core.errors import ModelLoadError
from core.llama_model import load_model

log = logging.getLogger("strop.worker")


def _faults() -> set[str]:
    return {f.strip() for f in os.environ.get("STROP_FAULT", "").split(",") if f.strip()}


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.inbox: deque = deque()
        self.decoder: Decoder | None = None
        self.aborted: set[int] = set()
        self.prepare_healing = False  # jobs will heal: build the table while idle

    def _take(self, msg) -> None:
        if msg[0] == "abort":
            self.aborted.add(msg[1])
        elif msg[0] == "exit":
            raise SystemExit(0)
        else:
            self.inbox.append(msg)

    def _drain(self) -> None:
        while self.conn.poll(0):
            self._take(self.conn.recv())

    def _next(self):
        while not self.inbox:
            if self.prepare_healing and self.decoder is not None and not self.conn.poll(0):
                # Idle: build the token-healing table a step at a time, before the first keystroke needs it.
                self.prepare_healing = not self.decoder.prepare_healing()
                continue
            self._take(self.conn.recv())
        return self.inbox.popleft()

    def load(self, resolved, settings: dict, options: dict) -> None:
        if self.decoder is not None:
            self.decoder.model.close()
            self.decoder = None
        try:
            model = load_model(resolved, n_ctx=options["n_ctx"], n_threads=options["n_threads"],
                               n_gpu_layers=options["n_gpu_layers"],
                               use_extra_bufts=settings.get("use_extra_bufts", True))
        except ModelLoadError as err:
            self.conn.send(("load_error", str(err)))
            return
        self.decoder = Decoder(model, slots=options.get("slots", 4))
        self.prepare_healing = bool(options.get("heal", False))
        if "canary-crash-with-extra-bufts" in _faults() and settings.get("use_extra_bufts", True):
            os.kill(os.getpid(), signal.SIGSEGV)
        speeds = canary(self.decoder)
        import llama_cpp

        self.conn.send(("loaded", {"speeds": speeds, "pid": os.getpid(), "n_ctx": model.n_ctx,
                                   "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace")}))

    def run(self, job: Job) -> None:
        if self.decoder is None:
            self.conn.send(("result", job.id, None, []))
            return

        def abort() -> bool:
            self._drain()
            return job.id in self.aborted

        try:
            gen = None if job.id in self.aborted else self.decoder.run(job, abort)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise  # the server went away mid-job (abort() reads the connection): end quietly in main()
        except Exception:  # a failing job must not take the worker down
            log.exception("generation failed")
            gen = None
        self.aborted = {i for i in self.aborted if i > job.id}
        self.conn.send(("result", job.id, gen, self.decoder.cached()))

    def serve(self) -> None:
        while True:
            msg = self._next()
            if msg[0] == "load":
                self.load(*msg[1:])
            elif msg[0] == "job":
                self.run(msg[1])


def main(argv: list[str]) -> int:
    # No PR_SET_PDEATHSIG: it fires when the spawning *thread* ends (loads run in short-lived
    # threads). The worker ends instead when its connection closes, which the parent's death does.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(int(argv[1]))
    try:
        Worker(conn).serve()
    except (EOFError, OSError, SystemExit):  # the server went away, or asked us to exit
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

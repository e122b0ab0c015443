"""A pre-loaded process that forks one child per trial: ``python -m edgetrain.sweep.zygote``.

A fresh Python process pays for importing torch, torch's compiler stack (the first
optimizer imports ``torch._dynamo``) and the data set's libraries before it trains: 5-15 s
on a small shared CPU, more than a short trial trains. The zygote imports them once and
forks a child per trial, so every trial is still its own process (a crash or kill ends
only that trial) but starts in milliseconds.

Protocol (one zygote per worker thread, one trial at a time), lines on stdin/stdout: a
request ``{"spec": PATH, "log": PATH, "cwd": DIR, "env": {...}}`` (JSON, through the pipe
so that the environment is never written to disk) -> ``started PID`` ... ``exited CODE``
(negative: killed by that signal).
The zygote never runs a torch operation before forking (an OpenMP thread pool does not
survive ``fork``), and it ends when its worker goes away (stdin closes or, on Linux, the
worker's death signal).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

__all__ = ["PRELOAD", "main"]

#: Imported before the first fork; failures are ignored (that module is then imported by
#: the trial itself).
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torch.optim",
    "torch.utils.serialization",
    "edgetrain.train",
    "edgetrain.train.features.budget",  # with edgetrain.adapt, .memory and .prune
    "edgetrain.train.features.monitor",
    "edgetrain.zoo",
    "edgetrain.measure",
    "edgetrain.sweep.trial",
    "edgetrain.sweep.objectives",
    "edgetrain.sweep.quantize",
    "sklearn.datasets",
)


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # optional speed-up only: the trial imports it itself
            continue


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the trial process of ``request``."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores Ctrl-C
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if request.get("cwd"):
        os.chdir(request["cwd"])
    if request.get("env") is not None:
        os.environ.clear()
        os.environ.update(request["env"])
        for path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
            if path and path not in sys.path:
                sys.path.insert(0, path)
    from edgetrain.sweep import trial

    return trial.main([request["spec"]])


def main() -> int:
    """Serve trial requests until stdin closes."""
    from edgetrain.sweep.trial import _die_with_parent

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trials and the sweep
    _preload()
    out = sys.stdout
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            request["spec"], request["log"]
        except (ValueError, KeyError, TypeError):
            print("error bad request", file=out, flush=True)
            continue
        pid = os.fork()
        if pid == 0:  # the trial
            code = 1
            try:
                code = _child(request)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"started {pid}", file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {os.waitstatus_to_exitcode(status)}", file=out, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter finalisation: tearing down torch and the preloaded modules takes
    # 1-2 s, which the sweep would wait for at its end; the zygote holds nothing to save
    os._exit(code)

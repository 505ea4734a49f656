"""Runs the ``cliprt`` command line in a child process, through ``python -m cliprt``, on the
same cliprt package the tests import.

The child resolves imports like this process: it inherits the environment, puts the
directory holding the imported package first on its path, and keeps only the import hooks
(``sys.meta_path``) this process has, so an installed copy of cliprt that this process
does not use (an editable install beside a source tree under test) cannot stand in for
it. The child checks that it got the same package and exits 99 otherwise."""
from __future__ import annotations

import os
import subprocess
import sys

import cliprt

MISMATCH = 99

_LAUNCH = """
import os, runpy, sys
want, keep = sys.argv[1], set(sys.argv[2].split(","))
sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__module__", None) in keep]
import cliprt
if os.path.realpath(cliprt.__file__) != want:
    print(f"the child imported cliprt from {cliprt.__file__}, not {want}", file=sys.stderr)
    sys.exit(99)
sys.argv = ["cliprt"] + sys.argv[3:]
runpy.run_module("cliprt", run_name="__main__", alter_sys=True)
"""


def run_cliprt(*argv, timeout: float, env=None) -> subprocess.CompletedProcess:
    """``cliprt ARGV...`` in a child process; raises subprocess.TimeoutExpired after `timeout`
    seconds (the child is killed), so a command that hangs fails the test instead."""
    package = os.path.realpath(cliprt.__file__)
    hooks = ",".join(sorted({getattr(f, "__module__", "") or "" for f in sys.meta_path}))
    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(package))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, package, hooks] + [os.fspath(a) for a in argv],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode != MISMATCH, proc.stderr
    return proc

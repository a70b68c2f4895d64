"""Shared helpers for the end-to-end tests: run the real build/llmtune binary."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("LLMTUNE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BIN = Path(os.environ.get("LLMTUNE_BIN", ROOT / "build" / "llmtune"))


class Result:
    def __init__(self, proc):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.err_lines = [l for l in proc.stderr.splitlines() if l.strip()]


@pytest.fixture
def llmtune():
    """llmtune(*args, input=None) runs the binary (stdin: `input`, else none) and returns its exit
    code, stdout and stderr."""
    assert BIN.exists(), f"{BIN} is missing: build first (scripts/build.sh)"

    def run(*args, cwd=None, env=None, timeout=120, input=None):
        proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL, cwd=cwd, env=env,
                              timeout=timeout)
        return Result(proc)

    return run

"""Running a job script (jobs/*.py) inside the test process, shared by the tests that drive the jobs."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_job(script: str, *args: str, capsys, monkeypatch) -> tuple[int, str, str]:
    """Run ``jobs/<script>``'s ``__main__`` in this process: the same code path as ``python jobs/<script>``, without
    paying ~6 s of interpreter and torch/Ray imports per case; it joins the session's Ray.

    Returns:
        (exit status, stdout, stderr) of the job.
    """
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "jobs" / script), *args])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "jobs" / script), run_name="__main__")
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err

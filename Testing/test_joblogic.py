"""The job life cycle that the three module logics share (UnleashCommon/joblogic.py), run with real jobs:
start, events, a result made by the logic's loader, one error line, cancel, one job at a time."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("slicer", reason="slicer-core (the test extra) runs the Slicer side of a job")

from unleash.jobs import register_command  # noqa: E402
from UnleashCommon.joblogic import NO_RESULT, JobLogic  # noqa: E402


def python_job(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def result_job(**fields) -> list[str]:
    return python_job(f"import json; print(json.dumps({json.dumps({'event': 'result', **fields})}))")


def test_a_finished_job_gives_the_loaders_result_to_the_caller_and_to_on_finished():
    logic, finished, events = JobLogic(), [], []
    result = logic.runJob(result_job(count=3), load=lambda job: job.result["count"] * 2, wait=True,
                          onEvent=events.append, onFinished=lambda *outcome: finished.append(outcome))
    assert result == 6 and finished == [(6, None)]
    assert events == [{"event": "result", "count": 3}]
    assert not logic.running


def test_a_failing_engine_job_ends_with_its_one_line_error(tmp_path):
    logic, finished = JobLogic(), []
    command = register_command(tmp_path / "absent_fixed.nii.gz", tmp_path / "absent_moving.nii.gz", tmp_path / "out",
                               device="cpu", python=sys.executable)
    with pytest.raises(RuntimeError, match="absent_(fixed|moving).nii.gz") as raised:
        logic.runJob(command, load=lambda job: pytest.fail("no result to load"), wait=True,
                     onFinished=lambda *outcome: finished.append(outcome))
    assert finished == [(None, str(raised.value))] and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_loader_that_fails_and_a_job_without_result_are_errors():
    def broken(job):
        raise ValueError("the result folder has no displacement.nii.gz")

    with pytest.raises(RuntimeError, match="loading the results failed: the result folder has no displacement"):
        JobLogic().runJob(result_job(), load=broken, wait=True)
    with pytest.raises(RuntimeError, match=NO_RESULT):
        JobLogic().runJob(python_job("print('no events at all')"), wait=True)


def test_one_job_at_a_time_and_cancel_ends_it_as_cancelled():
    logic, finished = JobLogic(), []
    job = logic.runJob(python_job("import time; time.sleep(60)"), onFinished=lambda *outcome: finished.append(outcome))
    assert logic.running
    with pytest.raises(RuntimeError, match="already running"):
        logic.runJob(result_job())
    logic.cancel()
    job.wait(timeout=30)
    assert not logic.running and finished == [(None, "cancelled")]

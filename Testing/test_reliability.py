"""Every promise of the CLI under bad input, interruption and faults, with real files and real
processes: bad input gets one line and leaves every file as it was (bad_inputs.CASES); signals at
different moments leave no temporary folder and no partial output; a killed run's debris is
removed by the next run; a full disk is one line with the path; concurrent runs into one folder
never mix; a training run killed before its first checkpoint resumes; a diverging run stops
without writing a model; evaluate records a failed pair and goes on."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import CASES, TINY_TRAINING, cut, make_fixtures, snapshot, tree, verdict, write_scan
from conftest import REPO
from test_sample import sampler_file  # noqa: F401  (the tiny sampler model file, a fixture)

from unleash.cli import main
from unleash.datasets import read_landmarks
from unleash.output_folder import MARKER
from unleash.outputs import FILES

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
UNLEASH = [sys.executable, "-m", "unleash"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("reliability"))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}: {c.name}" for c in CASES])
def test_bad_input_gets_one_line_and_leaves_every_file_as_it_was(case, fixtures, tmp_path, monkeypatch, capsys):
    argv = case.make(tmp_path, fixtures)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # the argument parser's refusal
        code = exc.code
    assert verdict(code, capsys.readouterr().err, case.expected, before, snapshot(tmp_path), tmp_path) is None


# the CLI in a fresh interpreter, saying at its exit whether torch was imported
TORCH_IMPORTED = """import sys
from unleash.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # the argument parser's refusal
    code = exc.code
print("torch" in sys.modules)
sys.exit(code)"""


TORCH_FREE = [c for c in CASES if not c.needs_torch]


@pytest.mark.parametrize("case", TORCH_FREE, ids=[f"{c.kind}: {c.name}" for c in TORCH_FREE])
def test_bad_input_is_refused_before_torch_is_imported(case, fixtures, tmp_path):
    """Importing torch alone takes over a second: every refusal but a weights' fit comes before it (the 2 s target)."""
    job = subprocess.run([sys.executable, "-c", TORCH_IMPORTED, *case.make(tmp_path, fixtures)], capture_output=True,
                         text=True, cwd=tmp_path, env=ENV, timeout=120)
    assert job.returncode == 2 and case.expected in job.stderr, job.stderr
    assert job.stdout.splitlines()[-1] == "False", f"torch was imported before the refusal: {job.stderr}"


def temporary_folders(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if ".partial-" in p.name or ".old-" in p.name]


def complete_output(out: Path) -> bool:
    """The folder holds every registration output and its MARKER lists exactly them."""
    listed = set(json.loads((out / MARKER).read_text())["files"])
    return listed == set(FILES.values()) and all((out / name).stat().st_size > 0 for name in listed)


def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- paths ----

def test_non_utf8_input_and_output_paths_get_one_line_instead_of_an_abort(fixtures, tmp_path):
    fixed = write_scan(tmp_path / "fixed.nii.gz")
    odd = os.fsencode(tmp_path) + b"/scan_\xff.nii.gz"
    Path(os.fsdecode(odd)).write_bytes(fixed.read_bytes())
    for argv in ([b"register", odd, os.fsencode(fixed), b"-o", os.fsencode(tmp_path / "out")],
                 [b"register", os.fsencode(fixed), os.fsencode(fixed), b"-o", os.fsencode(tmp_path) + b"/out_\xfe"]):
        job = subprocess.run([*UNLEASH, *argv, b"--model", os.fsencode(fixtures.model)], capture_output=True, env=ENV,
                             timeout=120)
        err = job.stderr.decode("utf-8", "replace")
        assert job.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("unleash: error: ") and "not UTF-8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fixed.nii.gz", os.fsdecode(b"scan_\xff.nii.gz")])


def test_unicode_paths_register_and_the_report_is_strict_json(fixtures, tmp_path, capsys):
    folder = tmp_path / "Patientin Müller 日本"
    fixed, moving = write_scan(folder / "fïxed.nii.gz"), write_scan(folder / "møving.nii.gz")
    out = tmp_path / "résultats ✓"
    assert main(["register", str(fixed), str(moving), "-o", str(out), "--model", str(fixtures.model),
                 "--adapt-iters", "2", "--device", "cpu", "--progress", "none"]) == 0
    assert complete_output(out)
    assert strict_json(out / FILES["report"])["inputs"] == "vessels"


# ---- signals and killed runs ----

@pytest.fixture(scope="module")
def large_pair(tmp_path_factory):
    """A 1 mm pair of 176 x 160 x 176 voxels: its fields take a second or two to write here, so
    that a signal can arrive while the outputs are being written."""
    folder = tmp_path_factory.mktemp("large")
    array = np.zeros((176, 160, 176), np.uint8)
    array[8:168, 8:152, 4:172] = np.kron(tree(), np.ones((4, 3, 3), np.uint8))
    return write_scan(folder / "fixed.nii.gz", array), write_scan(folder / "moving.nii.gz", np.roll(array, 3, axis=2))


def start_register(pair, out: Path, model: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*UNLEASH, "register", str(pair[0]), str(pair[1]), "-o", str(out), "--model", str(model),
                             "--adapt-iters", "4", "--device", "cpu", "--progress", "json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_event(job: subprocess.Popen, done) -> None:
    for line in job.stdout:
        if line.startswith("{") and done(json.loads(line)):
            return


def refined(event: dict) -> bool:
    """The refinement's last step: the fields are mapped back and written next."""
    return event.get("stage") == "refinement" and event["step"] == event["total"]


def started(event: dict) -> bool:
    return event["event"] == "log"


# (the event after which the signal is sent, seconds later)
MOMENTS = {"while preparing": (started, 0.0), "at the end of the refinement": (refined, 0.0),
           "while writing": (refined, 0.6), "later while writing": (refined, 1.5)}


@pytest.mark.parametrize("signal_name, moment", [("SIGINT", "while preparing"), ("SIGTERM", "at the end of the refinement"),
                                                  ("SIGTERM", "while writing"), ("SIGINT", "while writing"),
                                                  ("SIGTERM", "later while writing")])
def test_a_signal_at_any_moment_leaves_no_temporary_folder_and_no_partial_output(
        signal_name, moment, large_pair, fixtures, tmp_path):
    out = tmp_path / "out"
    job = start_register(large_pair, out, fixtures.model)
    event, delay = MOMENTS[moment]
    wait_for_event(job, event)
    time.sleep(delay)
    job.send_signal(getattr(signal, signal_name))
    _, err = job.communicate(timeout=120)
    assert not temporary_folders(tmp_path)
    if job.returncode == 0:  # the signal came after the outputs were in place
        assert complete_output(out)
    else:
        assert job.returncode == 128 + getattr(signal, signal_name), err
        assert err.strip().splitlines()[-1] == f"unleash: error: interrupted by {signal_name}"
        assert not out.exists() or complete_output(out)


def test_after_sigkill_while_writing_the_next_run_removes_the_debris(large_pair, fixtures, tmp_path):
    out = tmp_path / "out"
    job = start_register(large_pair, out, fixtures.model)
    wait_for_event(job, refined)
    time.sleep(0.6)
    job.kill()
    job.communicate(timeout=60)
    left = temporary_folders(tmp_path)
    alive = tmp_path / f".out.partial-{os.getpid()}-live"  # a live job's staging folder stays
    alive.mkdir()
    second = start_register(large_pair, out, fixtures.model, "--overwrite")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert complete_output(out)
    assert temporary_folders(tmp_path) == [alive.name], left


def test_concurrent_runs_into_one_folder_never_mix(large_pair, fixtures, tmp_path):
    out = tmp_path / "out"
    jobs = [start_register(large_pair, out, fixtures.model) for _ in range(2)]
    results = [(job.wait(timeout=300), job.stderr.read()) for job in jobs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another job" in refused or "not empty" in refused
    assert complete_output(out) and not temporary_folders(tmp_path)
    jobs = [start_register(large_pair, out, fixtures.model, "--overwrite") for _ in range(2)]
    assert [job.wait(timeout=300) for job in jobs] == [0, 0]
    assert complete_output(out) and not temporary_folders(tmp_path)


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (a full disk, for real); skips where mounting is not allowed."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("command", ["register", "sample"])
def test_a_full_disk_is_one_line_with_the_path_and_leaves_nothing(command, fixtures, tmp_path, request):
    with small_disk(tmp_path / "disk", "4k") as disk:
        if command == "register":
            fixed = write_scan(tmp_path / "fixed.nii.gz", np.kron(tree(), np.ones((2, 2, 2), np.uint8)))
            argv = ["register", str(fixed), str(fixed), "--model", str(fixtures.model), "--adapt-iters", "2"]
        else:
            argv = ["sample", "-n", "2", "--steps", "2", "--model", str(request.getfixturevalue("sampler_file"))]
        job = subprocess.run([*UNLEASH, *argv, "-o", str(disk / "out"), "--device", "cpu", "--progress", "none"],
                             capture_output=True, text=True, env=ENV, timeout=300)
        lines = job.stderr.strip().splitlines()
        assert job.returncode != 0 and len(lines) == 1, job.stderr
        assert "no space left" in lines[0] and str(disk) in lines[0]
        assert list(disk.iterdir()) == []


# ---- landmarks ----

def test_a_landmark_csv_saved_by_a_spreadsheet_is_read(tmp_path):
    """Spreadsheets save UTF-8 CSV with a byte order mark and CRLF line ends; the header is still the header."""
    path = tmp_path / "landmarks.csv"
    path.write_bytes(("\ufefffixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k\r\n1,2,3,4,5,6\r\n").encode())
    fixed, moving = read_landmarks(path)
    assert fixed.tolist() == [[1, 2, 3]] and moving.tolist() == [[4, 5, 6]]


# ---- training ----

def train_tiny(run: Path, fixtures, config: Path, *extra: str) -> list[str]:
    config.write_text(json.dumps(TINY_TRAINING))
    return [*UNLEASH, "train", "registration", "--data", str(fixtures.pairs), "--out", str(run), "--config", str(config),
            "--iterations", "3", "--device", "cpu", "--progress", "none", *extra]


def test_a_training_run_on_a_full_disk_is_one_line_and_keeps_what_it_wrote(fixtures, tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        job = subprocess.run(train_tiny(disk / "run", fixtures, tmp_path / "config.json"), capture_output=True, text=True,
                             env=ENV, timeout=300)
        lines = job.stderr.strip().splitlines()
        assert job.returncode == 2 and len(lines) == 1 and "No space left" in lines[0], job.stderr
        assert (disk / "run" / "config.json").is_file() and not list((disk / "run").rglob("*.tmp"))


def test_two_training_jobs_into_one_new_run_folder_never_mix(fixtures, tmp_path):
    run = tmp_path / "run"
    jobs = [subprocess.Popen(train_tiny(run, fixtures, tmp_path / f"config_{i}.json"), stderr=subprocess.PIPE, text=True,
                             env=ENV) for i in range(2)]
    results = sorted((job.wait(timeout=300), job.stderr.read()) for job in jobs)
    assert [code for code, _ in results] == [0, 2], results
    assert "another training job" in results[1][1] or "not empty" in results[1][1]
    with open(run / "metrics.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]


def test_a_training_run_killed_before_its_first_checkpoint_resumes(fixtures, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_TRAINING))
    run = tmp_path / "run"
    job = subprocess.Popen([*UNLEASH, "train", "registration", "--data", str(fixtures.pairs), "--out", str(run),
                            "--config", str(config), "--iterations", "2", "--device", "cpu"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    while not (run / "config.json").exists() and job.poll() is None:
        time.sleep(0.01)
    job.kill()
    job.wait(timeout=60)
    if (run / "checkpoints" / "last.safetensors").exists():
        pytest.skip("the run reached its first checkpoint before the kill")
    resumed = subprocess.run([*UNLEASH, "train", "registration", "--resume", str(run), "--device", "cpu"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "starts again from step 0" in resumed.stderr
    assert (run / "model.safetensors").is_file()


def test_a_diverging_run_stops_with_one_line_and_writes_no_model(fixtures, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY_TRAINING, "training": {**TINY_TRAINING["training"], "gradient_clip": 0}}))
    run = tmp_path / "run"
    code = main(["train", "registration", "--data", str(fixtures.pairs), "--out", str(run), "--config", str(config),
                 "--iterations", "20", "--lr", "1e30", "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "not finite" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "model.safetensors").exists()


# ---- evaluate ----

def test_evaluate_records_a_failed_pair_goes_on_and_exits_non_zero(fixtures, tmp_path, capsys):
    folder = tmp_path / "val"
    for case in ("001", "002"):
        write_scan(folder / f"case_{case}_1.nii.gz")
        write_scan(folder / f"case_{case}_2.nii.gz")
    cut(folder / "case_001_2.nii.gz", 0.5)
    out = tmp_path / "out"
    code = main(["evaluate", str(folder), "-o", str(out), "--model", str(fixtures.model), "--adapt-iters", "2",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    rows = {row["case"]: row for row in csv.DictReader(open(out / "evaluation.csv"))}
    assert "truncated" in rows["case_001"]["error"] and rows["case_002"]["error"] == "" and rows["case_002"]["seconds"]
    summary = strict_json(out / "evaluation.json")["overall"]
    assert summary["pairs"] == 1 and summary["failed"] == 1
    assert "\ncase_001: failed: " in captured.err  # a line of its own, not glued to the progress bar
    assert captured.err.strip().splitlines()[-1].startswith("unleash: error: 1 of 2 pairs failed")
    assert "case_001" in captured.out and "failed" in captured.out


def test_stale_folders_of_a_dead_job_are_removed_and_a_live_jobs_kept(fixtures, tmp_path, monkeypatch, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [tmp_path / f".out.partial-{pid}-abc", tmp_path / f".out.old-{pid}-def"]
    for folder in stale:
        (folder / "out").mkdir(parents=True)
        (folder / "out" / "half.nii.gz").write_bytes(b"\x1f\x8b")
    live = tmp_path / f".out.partial-{os.getpid()}-ghi"
    live.mkdir()
    other = tmp_path / f".other.partial-{pid}-jkl"  # another destination's: not this run's business
    other.mkdir()
    fixed = write_scan(tmp_path / "scans" / "fixed.nii.gz")
    assert main(["register", str(fixed), str(fixed), "-o", str(tmp_path / "out"), "--model", str(fixtures.model),
                 "--adapt-iters", "2", "--device", "cpu", "--progress", "none"]) == 0
    assert sorted(temporary_folders(tmp_path)) == sorted([live.name, other.name])

"""`tiplight study`: the grid, resuming, failures, both executors, and the report with its statistics."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from test_cli import write_config

from tiplight.cli import main as cli_main
from tiplight.study import main
from tiplight.study.grid import Axis, Study
from tiplight.study.intervals import interval, paired, t975
from tiplight.study.report import markdown, read_csv, report


def grid_dir(tmp_path: Path, tiny, prompts_file) -> Path:
    """A config folder like configs/: a base config and a `selection/` folder of fragments."""
    root = tmp_path / "configs"
    (root / "selection").mkdir(parents=True)
    write_config(root / "base.yaml", tiny, prompts_file)
    for name, selector in (("all", "AllTokens"), ("half", "SoftOrTopK")):
        (root / "selection" / f"{name}.yaml").write_text(yaml.safe_dump({"model": {"selector": {"class_path": selector}}}))
    return root


def test_axes_from_fragments_and_options(tmp_path, tiny, prompts_file):
    root = grid_dir(tmp_path, tiny, prompts_file)
    frag = Axis.parse("selection=all,half", root)
    assert frag.args("half") == ["--config", str(root / "selection" / "half.yaml")] and frag.label("half") == "half"
    opt = Axis.parse("model.optimizer.init_args.lr=1e-4, 3e-4", root)
    assert opt.values == ("1e-4", "3e-4") and opt.args("3e-4") == ["--model.optimizer.init_args.lr=3e-4"]
    assert opt.label("3e-4") == "lr=3e-4"
    with pytest.raises(ValueError, match="no fragment nope in .*; known: all, half"):
        Axis.parse("selection=all,nope", root)
    with pytest.raises(ValueError, match="is not KEY=V1,V2"):
        Axis.parse("selection", root)


def test_dry_run_lists_one_command_per_setting_and_seed(tmp_path, tiny, prompts_file, capsys):
    root = grid_dir(tmp_path, tiny, prompts_file)
    out = tmp_path / "study"
    assert main(["--config", str(root / "base.yaml"), "--grid", "selection=all,half", "--grid",
                 "model.memory.chunk_size=8,16", "--seeds", "0", "1", "--out", str(out), "--jobs", "2", "--dry-run",
                 "--", "--trainer.max_steps=1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and not out.exists()  # 2 x 2 settings x 2 seeds, nothing run or written
    assert all(line.startswith("OMP_NUM_THREADS=") and "--trainer.max_steps=1" in line for line in lines)
    assert sum("--seed_everything=1" in line for line in lines) == 4
    assert sum(str(root / "selection" / "half.yaml") in line and "--model.memory.chunk_size=16" in line for line in lines) == 2


def test_help_explains_the_grid(capsys):
    with pytest.raises(SystemExit):
        cli_main(["study", "--help"])
    text = capsys.readouterr().out
    assert "KEY=V1,V2" in text and "--seed_everything" in text and "results.csv" in text and "submitit" in text


def test_bad_baseline_is_one_sentence(tmp_path, tiny, prompts_file, capsys):
    root = grid_dir(tmp_path, tiny, prompts_file)
    with pytest.raises(SystemExit) as done:
        cli_main(["study", "--config", str(root / "base.yaml"), "--grid", "selection=all,half",
                  "--out", str(tmp_path / "s"), "--baseline", "everything"])
    assert done.value.code == 2
    assert "--baseline 'everything' is not a setting of the grid; settings: all, half" in capsys.readouterr().err


def test_interval_and_paired_difference_against_direct_formulas():
    values = [0.50, 0.55, 0.61, 0.58, 0.52]
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    got = interval(values)
    assert got.mean == pytest.approx(mean) and got.half_width == pytest.approx(2.776445 * sd / math.sqrt(5))
    # published quantiles (5 digits); at 31 degrees of freedom 1.96 was 3.9% off
    for df, want in ((1, 12.7062), (2, 4.30265), (4, 2.77645), (30, 2.04227), (31, 2.03951), (1000, 1.96234)):
        assert t975(df) == pytest.approx(want, abs=5e-5), df
    assert math.isnan(interval([0.5]).half_width) and interval([]).n == 0
    base = {0: 0.5, 1: 0.6, 2: 0.55}
    diff = paired({0: 0.52, 1: 0.63, 2: 0.56, 3: 0.9}, base)  # seed 3 has no baseline: left out
    assert diff.n == 3 and diff.mean == pytest.approx(0.02)
    assert diff.half_width == pytest.approx(4.302653 * 0.01 / math.sqrt(3)) and not diff.excludes_zero()
    assert paired({0: 0.52, 1: 0.62, 2: 0.57}, base).excludes_zero()  # +0.02 each time: no spread


def fake_study(tmp_path: Path) -> Path:
    """A finished study's folder without running anything: study.json and each run's summary.json."""
    out = tmp_path / "fake"
    study = Study(out=str(out), configs=["base.yaml"], axes=[Axis("selection", ("all", "half"), str(tmp_path))],
                  seeds=[0, 1, 2], baseline="all")
    study.save()
    for run in study.runs():
        after = 0.5 + 0.01 * run.seed + (0.05 if run.setting == "half" else 0.0)
        if run.setting == "half" and run.seed == 2:
            Path(run.folder).mkdir(parents=True)
            (Path(run.folder) / "failed.json").write_text("{}")
            continue
        Path(run.folder).mkdir(parents=True)
        (Path(run.folder) / "summary.json").write_text(json.dumps({
            "accuracy_before": 0.4, "accuracy_after": after, "steps": 10, "wall_seconds": 3.0,
            "peak_memory_mib": 100.0, "train/kept_fraction": 1.0 if run.setting == "all" else 0.5,
            "quadrant/Q3_all": 0.1, "quadrant/Q3_kept": 0.2, "accuracy_curve": {"0": 0.4, "10": after}}))
    return out


def test_report_tables_plots_and_csv_with_commands(tmp_path):
    out = fake_study(tmp_path)
    text = report(out)
    assert "runs: 5 done, 1 failed, 0 pending" in text
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done", "failed"}
    assert all(r["command"].startswith("OMP_NUM_THREADS=") and "--seed_everything=" in r["command"] for r in rows)
    half = next(line for line in text.splitlines() if line.startswith("| half |"))
    # half: seeds 0, 1 -> 55.0 and 56.0; paired with all over seeds 0, 1: +5.0 points exactly (zero spread)
    assert half == "| half | 2 | 40.0 ± 0.0 | 55.5 ± 6.4 | 5.0 ± 0.0 | 0.500 | 3 |"
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "curves.png").stat().st_size > 1000


def test_report_is_derived_from_results_csv_alone(tmp_path):
    out = fake_study(tmp_path)
    report(out)
    rows = read_csv(out / "results.csv")
    shutil.rmtree(out / "runs")  # nothing but results.csv is needed to rebuild the tables
    assert markdown(rows, "all") == markdown(read_csv(out / "results.csv"), "all")
    assert "| all | 3 |" in markdown(rows, "all")


@pytest.mark.slow
def test_a_study_runs_resumes_and_records_a_failure(tmp_path, tiny, prompts_file, capsys):
    root = grid_dir(tmp_path, tiny, prompts_file)
    out = tmp_path / "study"
    args = ["--config", str(root / "base.yaml"), "--grid", "selection=all,half", "--grid", "model.memory.chunk_size=8,0",
            "--seeds", "0", "--out", str(out), "--jobs", "2", "--baseline", "all chunk_size=8",
            "--", "--trainer.max_steps=1", "--trainer.val_check_interval=1"]
    assert main(args) == 1  # chunk_size=0 fails at start-up; the other runs go on
    rows = {(r["setting"], r["status"]) for r in read_csv(out / "results.csv")}
    assert rows == {("all chunk_size=8", "done"), ("half chunk_size=8", "done"),
                    ("all chunk_size=0", "failed"), ("half chunk_size=0", "failed")}
    failed = json.loads((out / "runs" / "all_chunk_size=0" / "seed0" / "failed.json").read_text())
    assert failed["returncode"] == 2 and any("model.memory.chunk_size=0" in line for line in failed["log_tail"])
    summary = out / "runs" / "half_chunk_size=8" / "seed0" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 1  # resumed: finished runs are skipped, failed ones tried again
    assert "2 already done, 2 to run" in capsys.readouterr().out and summary.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_submitit_local_executor_takes_the_same_path(tmp_path, tiny, prompts_file):
    pytest.importorskip("submitit")
    root = grid_dir(tmp_path, tiny, prompts_file)
    out = tmp_path / "study"
    assert main(["--config", str(root / "base.yaml"), "--grid", "selection=half", "--seeds", "0", "1",
                 "--out", str(out), "--executor", "submitit", "--cluster", "local", "--jobs", "2",
                 "--", "--trainer.max_steps=1", "--trainer.val_check_interval=1"]) == 0
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["done", "done"]
    assert (out / "submitit").is_dir()


def test_slurm_parameters_keep_numbers_as_numbers():
    from tiplight.study import _parameter

    assert _parameter("gpus_per_node=1") == ("gpus_per_node", 1)
    assert _parameter("slurm_partition=gpu") == ("slurm_partition", "gpu")
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        _parameter("partition")


def test_report_without_before_accuracies(tmp_path):
    """Configs that do not evaluate at fit start (the paper pairs) leave accuracy_before empty."""
    out = fake_study(tmp_path)
    for summary in (out / "runs").rglob("summary.json"):
        data = json.loads(summary.read_text())
        data["accuracy_before"] = None
        summary.write_text(json.dumps(data))
    assert "| all | 3 | - |" in report(out)


def test_ctrl_c_starts_no_further_run(monkeypatch, tmp_path):
    from tiplight.study import runner

    started = []
    monkeypatch.setattr(runner, "execute", lambda run: started.append(run) or 0)

    def interrupt(run, code):
        raise KeyboardInterrupt

    runs = Study(out=str(tmp_path), configs=["c.yaml"], axes=[Axis("k", tuple("abcdef"))], seeds=[0]).runs()
    with pytest.raises(KeyboardInterrupt):
        runner.run_local(runs, 1, interrupt)
    assert len(started) == 1


def test_report_reads_the_runs_where_the_study_folder_is_now(tmp_path, monkeypatch, capsys):
    """Once: after `mv` (or from another directory than a relative --out's), "0 done", and a good
    results.csv overwritten with pending rows."""
    out = fake_study(tmp_path)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    out.rename(moved)
    with pytest.raises(SystemExit) as done:
        cli_main(["study", "report", str(moved)])
    assert done.value.code == 0 and "runs: 5 done, 1 failed, 0 pending" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = Study.load("moved")
    relative.out = "moved"
    relative.save()  # as `tiplight study --out moved` saves it
    monkeypatch.chdir(tmp_path)
    assert "runs: 5 done" in report(moved)
    assert [r["status"] for r in read_csv(moved / "results.csv")].count("done") == 5


def test_a_truncated_summary_is_a_pending_run_named_in_the_report(tmp_path):
    out = fake_study(tmp_path)
    summary = out / "runs" / "half" / "seed0" / "summary.json"
    summary.write_text(summary.read_text()[:40])  # cut off while written
    text = report(out)
    assert "runs: 4 done, 1 failed, 1 pending" in text and f"{summary} is unreadable" in text
    assert not next(r for r in Study.load(out).runs() if r.folder == str(summary.parent)).finished


def test_a_rerun_with_other_fit_arguments_is_refused(tmp_path, tiny, prompts_file, capsys):
    """Once: the finished runs were reused as done and their commands rewritten to the new arguments."""
    from tiplight.study import build, parser

    root = grid_dir(tmp_path, tiny, prompts_file)
    args = ["--config", str(root / "base.yaml"), "--grid", "selection=all,half", "--out", str(tmp_path / "s")]
    study = build(parser().parse_args(args), ["--trainer.max_steps=1"])
    study.save()
    first = Path(study.runs()[0].folder)
    first.mkdir(parents=True)
    (first / "summary.json").write_text("{}")
    with pytest.raises(SystemExit) as done:
        cli_main(["study", *args, "--dry-run", "--", "--trainer.max_steps=2"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--trainer.max_steps=1 where this command gives --trainer.max_steps=2" in err and str(first) in err
    assert main([*args, "--dry-run", "--", "--trainer.max_steps=1"]) == 0  # the same arguments resume
    assert capsys.readouterr().out.startswith("# done: ")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
def test_a_run_is_locked_while_it_lives_and_dies_with_its_study(tmp_path, tiny, prompts_file):
    """Once: killing `tiplight study` orphaned its `tiplight fit`, and a rerun started a second fit there."""
    import os
    import subprocess
    import sys
    import time

    root = grid_dir(tmp_path, tiny, prompts_file)
    out = tmp_path / "study"
    command = [sys.executable, "-m", "tiplight.cli", "study", "--config", str(root / "base.yaml"), "--grid",
               "selection=half", "--out", str(out), "--", "--trainer.max_steps=100000",
               "--trainer.val_check_interval=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    lock, deadline = out / "runs" / "half" / "seed0" / ".lock", time.monotonic() + 300
    while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(lock.read_text())
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and f"is in use by another run (process {child} holds" in again.stderr
    parent.kill()
    parent.wait()
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)


def test_a_failed_run_may_be_retried_with_other_arguments(tmp_path, tiny, prompts_file, capsys):
    from tiplight.study import build, parser

    root = grid_dir(tmp_path, tiny, prompts_file)
    args = ["--config", str(root / "base.yaml"), "--grid", "selection=all", "--out", str(tmp_path / "s")]
    study = build(parser().parse_args(args), ["--model.memory.chunk_size=0"])
    study.save()
    Path(study.runs()[0].folder).mkdir(parents=True)
    (Path(study.runs()[0].folder) / "failed.json").write_text("{}")
    assert main([*args, "--dry-run", "--", "--model.memory.chunk_size=8"]) == 0
    assert "--model.memory.chunk_size=8" in capsys.readouterr().out


def test_compute_matched_column_against_a_direct_interpolation(tmp_path):
    """A selector is compared with the baseline after the baseline spent as many kept-token head FLOPs."""
    from tiplight.study.report import accuracy_at_cost, compute_matched, planted_table

    out = fake_study(tmp_path)
    flops = {"all": 1000.0, "half": 400.0}
    for summary in (out / "runs").rglob("summary.json"):
        data = json.loads(summary.read_text())
        setting = summary.parent.parent.name
        data.update({"cost/head_flops": flops[setting], "planted/recall": 0.25 if setting == "half" else 1.0,
                     "planted/precision": 0.1, "planted/share": 0.02})
        if setting == "all":  # a three-point curve: the interpolation must pick the right segment
            data["accuracy_curve"] = {"0": 0.4, "5": 0.45, "10": data["accuracy_after"]}
        summary.write_text(json.dumps(data))
    text = report(out)
    rows = read_csv(out / "results.csv")
    after = {(r["setting"], int(r["seed"])): float(r["accuracy_after"]) for r in rows if r["status"] == "done"}
    # direct: half spent 400 of all's 1000 FLOPs over 10 steps -> all's step 4: 0.4 + 0.05 * 4 / 5 = 0.44
    direct = {s: after[("half", s)] - 0.44 for s in (0, 1)}
    got = compute_matched(rows, "all")
    assert got.keys() == {"all", "half"} and all(math.isclose(got["half"][s], direct[s]) for s in (0, 1))
    assert all(math.isclose(got["all"][s], 0.0, abs_tol=1e-12) for s in (0, 1, 2))  # itself, at its own cost
    i = interval(list(direct.values()))
    half = next(line for line in text.splitlines() if line.startswith("| half |")).split(" | ")
    assert half[5] == f"{100 * i.mean:.1f} ± {100 * i.half_width:.1f}" and half[-1] == "0.00 |"
    assert "at equal head FLOPs" in text and "| half | 25.0 | 10.0 | 2.0 |" in planted_table(rows)
    assert (out / "compute.png").stat().st_size > 1000
    curve = {0: 0.4, 5: 0.45, 10: 0.6}
    assert accuracy_at_cost(curve, 10, 1000.0, 2000.0) == 0.6 and accuracy_at_cost(curve, 10, 1000.0, 0.0) == 0.4
    assert math.isclose(accuracy_at_cost(curve, 10, 1000.0, 750.0), 0.525)


def test_report_without_costs_or_planted_errors_has_neither_column(tmp_path):
    out = fake_study(tmp_path)
    text = report(out)
    assert "head FLOPs" not in text and "Planted errors" not in text and not (out / "compute.png").exists()
    assert "Seconds per step" not in text  # no run logged its step times


def _phase_seconds(setting: str, seed: int) -> dict[str, float]:
    scale = (2.0 if setting == "half" else 1.0) * (1 + seed)  # half's step is twice all's, on every seed
    return {"rollout": 0.5 * scale, "score": 0.25 * scale, "select": 0.125 * scale, "update": 0.125 * (3 - seed)}


def test_step_time_table_against_direct_sums_and_paired_ratios(tmp_path):
    from tiplight.study.report import step_time_table

    out = fake_study(tmp_path)
    for summary in (out / "runs").rglob("summary.json"):
        data, setting, seed = json.loads(summary.read_text()), summary.parent.parent.name, int(summary.parent.name[4:])
        data.update({f"time/{p}": v for p, v in _phase_seconds(setting, seed).items()})
        summary.write_text(json.dumps(data))
    text = report(out)
    assert "Seconds per step by phase" in text
    rows = read_csv(out / "results.csv")
    step = {(s, seed): sum(_phase_seconds(s, seed).values()) for s in ("all", "half") for seed in (0, 1, 2)}
    ratios = interval([step[("half", seed)] / step[("all", seed)] for seed in (0, 1)])  # half's seed 2 failed
    half = next(line for line in step_time_table(rows, "all").splitlines() if line.startswith("| half |"))
    cells = half.strip("| ").split(" | ")
    assert cells[1:5] == [f"{sum(_phase_seconds('half', s)[p] for s in (0, 1)) / 2:.3f}"
                          for p in ("rollout", "score", "select", "update")]
    assert cells[5] == f"{(step[('half', 0)] + step[('half', 1)]) / 2:.3f}"
    assert cells[6] == f"{ratios.mean:.2f} ± {ratios.half_width:.2f}" and ratios.half_width > 0
    assert "| all |" in step_time_table(rows, "all") and step_time_table(rows, None).count("paired") == 0


def test_step_times_of_a_run_that_predates_them_come_from_its_tensorboard_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    out = fake_study(tmp_path)
    run = next(r for r in Study.load(out).runs() if r.setting == "all" and r.seed == 0)
    writer = SummaryWriter(run.folder)
    for step, seconds in enumerate((0.25, 0.75)):  # logged every n steps: the report takes their mean
        for phase in ("rollout", "score", "select", "update"):
            writer.add_scalar(f"time/{phase}", seconds, step)
    writer.close()
    report(out)
    rows = {(r["setting"], r["seed"]): r for r in read_csv(out / "results.csv")}
    assert float(rows[("all", "0")]["update_seconds"]) == pytest.approx(0.5)
    assert rows[("all", "1")]["update_seconds"] == ""  # no summary times and no log: left blank

"""The benchmarks run (small sizes): packing on the CPU takes every code path its GPU runs take; the
backbones comparison scores every variant."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "packing.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_packing_benchmark_prints_epoch_times_and_a_speed_up():
    done = run("--rows", "1024", "--points", "2,1,16;1,0,16,8", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"\s+\d+\s+\d+\s+16\s", line)]
    assert len(rows) == 2 and all(line.rstrip().endswith("x") for line in rows)


def test_packing_throughput_mode_runs_on_the_cpu_and_refuses_a_missing_gpu():
    done = run("--rows", "1024", "--throughput", "--seconds", "0.3", "--batch", "256")
    assert done.returncode == 0, done.stderr
    assert "packed / one network:" in done.stdout and "M samples/s" in done.stdout
    if not torch.cuda.is_available():
        refused = run("--device", "cuda", "--throughput")
        assert refused.returncode != 0 and "no CUDA device is visible" in refused.stderr


def test_backbones_benchmark_scores_every_variant_under_one_configuration():
    script = SCRIPT.parent / "backbones.py"
    done = subprocess.run([sys.executable, str(script), "--one-config", "--datasets", "nhefs", "--members", "2",
                           "--point", '{"epochs": 2, "depth": 1, "width": 16}'],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("nhefs | ")]
    assert [row.split(" | ")[1] for row in rows] == ["mlp", "periodic", "tabm"]
    for row in rows:
        valid, test, singles = (float(value) for value in row.split(" | ")[-3:])
        assert 0 < valid < 2 and 0 < test < 2 and 0 < singles < 2


def test_ranking_benchmark_finds_the_top_groupings_it_asks_for():
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "ranking.py"), "--tasks", "8", "--groups", "40",
                           "--top", "10", "--seeds", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("8 | 40 | 10 | ")]
    assert [row[3] for row in rows] == ["structured", "noise"] and all(row[-1] == "10" for row in rows)
    asked = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith(("12 | 3", "30 | 3"))]
    assert len(asked) == 2 and 0 < int(asked[0][3]) < int(asked[1][3]) < 20_000


def test_tune_state_benchmark_times_the_copy_and_the_resume_check():
    script = SCRIPT.parent / "tune_state.py"
    done = subprocess.run([sys.executable, str(script), "--trials", "3", "--per-trial-kb", "4", "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s+3\s+[\d.]+\s+[\d.]+\s+[\d.]+$", done.stdout, re.MULTILINE), done.stdout

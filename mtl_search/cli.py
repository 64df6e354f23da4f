"""Command line: ``mtl-search`` / ``python -m mtl_search``.

Exit codes: 0 success, 2 bad input (a one-paragraph message, no traceback),
1 an internal failure (with its traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from mtl_search import __version__
from mtl_search.errors import UserError

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2

DESCRIPTION = """\
Decide which targets of a table to train together.

mtl_search trains candidate groups of tasks (one shared network per group) with
a Ray Tune + Optuna search over sharing depth, head sizes, loss weighting and
optimiser settings, then ranks every grouping of the tasks against single-task
baselines in results/<name>/leaderboard.csv.
"""

EPILOG = """\
examples:
  mtl-search run search_spaces/tabular.yaml
  mtl-search run search_spaces/tabular.yaml --set search.num_samples=40 --name quick
  mtl-search validate my_spec.yaml
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors are bad input too
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mtl-search", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mtl-search {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def spec_arguments(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("spec", metavar="SPEC", help="experiment spec (YAML), e.g. search_spaces/tabular.yaml")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override any spec key by its dotted path; the value is read as YAML "
                              "(e.g. --set search.num_samples=4 --set 'space.width={choice: [32, 64]}'); repeatable")

    run = commands.add_parser(
        "run", help="search groupings and write the leaderboard", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the search a spec describes on Ray (local unless --address or RAY_ADDRESS says "
                    "otherwise) and write results/<name>/: config.yaml, trials.csv, groups.csv, leaderboard.csv.",
    )
    spec_arguments(run)
    run.add_argument("--output", metavar="DIR", help="parent folder of the result directory (spec key: output)")
    run.add_argument("--name", help="experiment name, i.e. the result directory's name (spec key: name)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing result directory")
    run.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    run.add_argument("--verbose", action="store_true", help="show Ray's own logs")

    validate = commands.add_parser(
        "validate", help="check a spec and its data; trains nothing",
        description="Load and check the spec and the data (columns, task types, split, encoding) and print "
                    "what a run would do. Nothing is trained and nothing is written.",
    )
    spec_arguments(validate)
    return parser


def _load(args: argparse.Namespace):  # noqa: ANN202 - returns ExperimentSpec
    from mtl_search.config import load_spec

    overrides = list(args.overrides)
    if getattr(args, "output", None):
        overrides.append(f"output={args.output}")
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    return load_spec(args.spec, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from mtl_search.experiment import run_experiment

    spec = _load(args)
    run_experiment(spec, overwrite=args.overwrite, address=args.address, verbose=args.verbose)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from mtl_search.data import prepare
    from mtl_search.experiment import candidate_groups
    from mtl_search.search import resolve_num_samples

    spec = _load(args)
    data = prepare(spec)
    groups = candidate_groups(spec, data)
    trials = resolve_num_samples(spec, groups)
    print(data.summary())
    print(f"candidate groups ({spec.grouping.candidates}): {len(groups)}; trials: {trials}; "
          f"epochs per trial: {spec.space.max_epochs}; executor: {spec.search.trial_executor}")
    print(f"results would go to {spec.result_dir()}")
    print("spec and data are valid")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "validate": cmd_validate}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # an internal failure: keep the traceback for a bug report
        traceback.print_exc()
        print("error: internal failure (a bug in mtl_search or its environment); the traceback is above",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())

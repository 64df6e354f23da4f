"""Command line: ``mtl-search`` / ``python -m mtl_search``.

Exit codes: 0 success, 2 bad input (a one-paragraph message, no traceback),
1 an internal failure (with its traceback).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from mtl_search import __version__
from mtl_search.errors import Interrupted, NothingToDo, UserError

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
  mtl-search submit search_spaces/tabular.yaml --address http://127.0.0.1:8265 --output s3://bucket/mtl --wait
  mtl-search status JOB_ID --address http://127.0.0.1:8265
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
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run of this spec: finished trials are kept, unfinished ones "
                          "continue from their last checkpoint")
    _ray_arguments(run)

    resume = commands.add_parser(
        "resume", help="continue an interrupted experiment",
        description="Continue the interrupted experiment in RESULTS_DIR (the folder `run` wrote, e.g. "
                    "results/census-demo) with the spec recorded there: finished trials are kept and not re-run, "
                    "unfinished and failed ones continue from their last checkpoint, Optuna's state is restored, and "
                    "the leaderboard is rebuilt from all trials.",
    )
    resume.add_argument("results_dir", metavar="RESULTS_DIR", help="the experiment's result directory")
    _ray_arguments(resume)

    select = commands.add_parser(
        "select", help="choose the best set of networks for an inference budget",
        description="Budgeted network selection (Standley et al. 2020), exact: from a table of trained networks, "
                    "choose the set whose total cost fits the budget and minimises the summed loss, each task "
                    "served by its best chosen network (networks may overlap). The table (CSV) has columns "
                    "network (unique name), group (task ids joined by '+'), cost, and one loss column per task "
                    "(empty = not served).",
    )
    select.add_argument("networks", metavar="NETWORKS.csv", help="the table of networks")
    select.add_argument("--budget", type=float, required=True, help="the most total cost the networks may have")
    select.add_argument("--json", action="store_true", help="print the selection as JSON")

    validate = commands.add_parser(
        "validate", help="check a spec and its data; trains nothing",
        description="Load and check the spec and the data (columns, task types, split, encoding) and print "
                    "what a run would do. Nothing is trained and nothing is written.",
    )
    spec_arguments(validate)
    _cluster_commands(commands, spec_arguments)
    _review_commands(commands)
    return parser


def _ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--address`` and ``--verbose``, for the commands that start or join Ray to search."""
    parser.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def _cluster_commands(commands: argparse._SubParsersAction,
                      spec_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """``submit``, ``status``, ``logs`` and ``stop``: a search as a Ray Job on a cluster (mtl_search.jobs)."""
    address_help = ("the head's Ray dashboard / Jobs API, e.g. http://127.0.0.1:8265 (default: "
                    "RAY_API_SERVER_ADDRESS, then RAY_ADDRESS); see cluster/README.md")
    submit = commands.add_parser(
        "submit", help="run the search on a Ray cluster as a Ray Job",
        description="Validate the spec here, then submit `mtl-search run` as a Ray Job: the spec, a local data file "
                    "and this mtl_search package travel with the job. Prints the job id. Results go to the spec's "
                    "output as the cluster sees it: an absolute path on the head node or a URI (s3://, gs://). "
                    "Ray's authentication token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                    "~/.ray/auth_token.",
    )
    spec_arguments(submit)
    submit.add_argument("--address", help=address_help)
    submit.add_argument("--output", metavar="DIR_OR_URI",
                        help="parent of the result directory on the cluster: an absolute path or s3://, gs:// URI")
    submit.add_argument("--name", help="experiment name, i.e. the result directory's name (spec key: name)")
    submit.add_argument("--overwrite", action="store_true", help="replace an existing result directory")
    submit.add_argument("--wait", action="store_true",
                        help="stream the job's log and exit with its outcome (0 succeeded, 2 bad input, 1 failed)")
    submit.add_argument("--use-installed", action="store_true",
                        help="run the mtl_search installed on the cluster instead of uploading this one")
    submit.add_argument("--data-on-cluster", action="store_true",
                        help="data.source is an absolute path on the cluster: do not upload the data file")
    submit.add_argument("--verbose", action="store_true", help="show Ray's own logs in the job's log")
    for name, text in (("status", "show a submitted job's status"), ("logs", "print a submitted job's log"),
                       ("stop", "stop a submitted job")):
        sub = commands.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]} (see `submit`).")
        sub.add_argument("job_id", metavar="JOB_ID", help="the id `submit` printed")
        sub.add_argument("--address", help=address_help)
        if name == "logs":
            sub.add_argument("--follow", action="store_true",
                             help="keep streaming until the job ends, then exit with its outcome")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _review_commands(commands: argparse._SubParsersAction) -> None:
    """``leaderboard``, ``compare`` and ``report``: reviewing a finished result directory (mtl_search.review)."""
    where = "a result directory `run` wrote (e.g. results/census-demo) or its storage URI"
    board = commands.add_parser(
        "leaderboard", help="show a result directory's groupings as a table, re-ranked if asked",
        description="Print the groupings of RESULTS_DIR as a table. --by re-ranks them by one task's metric; "
                    "--budget keeps only groupings whose inference cost (networks or parameters, as the run's "
                    "grouping.cost) fits. Rankings are always chosen on the validation split; every number shown "
                    "besides the ranking key is from the test split.",
    )
    board.add_argument("results_dir", metavar="RESULTS_DIR", help=where)
    board.add_argument("--top", type=_positive_int, default=10, metavar="N", help="rows to show (default 10)")
    board.add_argument("--by", metavar="METRIC",
                       help="rank by: score (default: mean normalised loss over all tasks), a task name (its "
                            "headline metric: auc, rmse or accuracy), or TASK_nloss / TASK_METRIC; always on "
                            "validation")
    board.add_argument("--budget", type=float, metavar="B", help="keep groupings with inference_cost <= B")
    style = board.add_mutually_exclusive_group()
    style.add_argument("--csv", action="store_true", help="print CSV (leaderboard.csv's columns + ranked_by)")
    style.add_argument("--markdown", action="store_true", help="print a Markdown table, for a report")

    compare = commands.add_parser(
        "compare", help="two experiments' best groupings side by side",
        description="Compare two result directories: their rank-1 groupings side by side (test score, delta vs "
                    "single-task, per-task test metrics, confirmation, trials, wall time), then each one's top "
                    "groupings. A and B label the first and the second directory throughout.",
    )
    compare.add_argument("first", metavar="RESULTS_DIR_A", help=where)
    compare.add_argument("second", metavar="RESULTS_DIR_B", help=where)
    compare.add_argument("--top", type=_positive_int, default=3, metavar="K",
                         help="groupings to list per experiment (default 3)")
    style = compare.add_mutually_exclusive_group()
    style.add_argument("--csv", action="store_true",
                       help="print both top-K tables as one CSV with an experiment column")
    style.add_argument("--markdown", action="store_true", help="print Markdown tables")

    report = commands.add_parser(
        "report", help="draw the plots (and report.html) of a result directory",
        description="Write RESULTS_DIR/plots/*.png: the top groupings' per-task test losses, score vs inference "
                    "cost with the Pareto front, each task in its best group vs alone, and the affinity heatmap "
                    "(when measured). --html also writes RESULTS_DIR/report.html (static, images linked).",
    )
    report.add_argument("results_dir", metavar="RESULTS_DIR", help="a local result directory `run` wrote")
    report.add_argument("--top", type=_positive_int, default=10, metavar="N",
                        help="groupings in the top-groupings plot and the HTML table (default 10)")
    report.add_argument("--html", action="store_true", help="also write report.html")


def _overrides(args: argparse.Namespace) -> list[str]:
    from mtl_search.spec_file import literal_override

    overrides = list(args.overrides)
    if getattr(args, "output", None):
        overrides.append(literal_override("output", args.output))  # a path, never YAML
    if getattr(args, "name", None):
        overrides.append(literal_override("name", args.name))
    return overrides


def _load(args: argparse.Namespace):  # noqa: ANN202 - returns ExperimentSpec
    from mtl_search.spec_file import load_spec

    return load_spec(args.spec, _overrides(args))


def cmd_run(args: argparse.Namespace) -> int:
    from mtl_search.experiment import run_experiment

    spec = _load(args)
    if args.resume and args.overwrite:
        raise UserError("--resume continues the results in place and --overwrite deletes them: choose one")
    run_experiment(spec, overwrite=args.overwrite, resume=args.resume, address=args.address, verbose=args.verbose)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from mtl_search.experiment import resume_experiment

    resume_experiment(args.results_dir, address=args.address, verbose=args.verbose)
    return EXIT_OK


def _style(args: argparse.Namespace) -> str:
    return "csv" if args.csv else "markdown" if args.markdown else "text"


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from mtl_search.review import show_leaderboard

    print(show_leaderboard(args.results_dir, top=args.top, by=args.by, budget=args.budget, style=_style(args)),
          end="")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from mtl_search.review import show_compare

    print(show_compare(args.first, args.second, top=args.top, style=_style(args)), end="")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from mtl_search.report import write_report

    written = write_report(args.results_dir, top=args.top, html=args.html)
    print("\n".join(str(path) for path in written))
    return EXIT_OK


def cmd_select(args: argparse.Namespace) -> int:
    import json

    from mtl_search.networks_csv import format_selection, read_networks_csv
    from mtl_search.selection import select_networks

    networks, tasks = read_networks_csv(args.networks)
    if args.budget < 0:
        raise UserError(f"--budget must be >= 0, got {args.budget:g}")
    selection = select_networks(networks, tasks, args.budget)
    if selection is None:
        cheapest = min(n.cost for n in networks)
        raise UserError(f"no set of networks in {args.networks} within budget {args.budget:g} serves every task "
                        f"({', '.join(tasks)}); the cheapest network alone costs {cheapest:g}: raise --budget")
    print(json.dumps(selection.to_dict(), indent=2) if args.json else format_selection(selection))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from mtl_search.baselines import check_baselines
    from mtl_search.data import prepare
    from mtl_search.storage import result_location_text

    spec = _load(args)
    data = prepare(spec)
    spec.grouping.check_size(list(data.tasks))
    check_baselines(data, spec.baselines)
    strategy = spec.grouping.strategy()
    print(data.summary())
    if strategy.needs_affinity:
        by = "estimated loss" if strategy.needs_estimates else "affinity"
        print(f"candidate groups ({spec.grouping.candidates}): the singletons plus the groups of the top "
              f"{spec.grouping.top_k} groupings by {by}, chosen after an all-task affinity run "
              f"(at most {len(data.tasks) + spec.grouping.top_k * (len(data.tasks) // 2)} groups); "
              f"epochs per trial: {spec.space.max_epochs}; executor: {spec.search.trial_executor}")
    else:
        groups = strategy.propose(list(data.tasks))
        trials = spec.num_samples(groups)
        print(f"candidate groups ({spec.grouping.candidates}): {len(groups)}; trials: {trials}; "
              f"epochs per trial: {spec.space.max_epochs}; executor: {spec.search.trial_executor}")
    print(f"results would go to {result_location_text(spec)}")
    print("spec and data are valid")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from mtl_search.jobs import submit_search

    return submit_search(args.spec, _overrides(args), address=args.address, wait=args.wait,
                         overwrite=args.overwrite, verbose=args.verbose, use_installed=args.use_installed,
                         data_on_cluster=args.data_on_cluster)


def cmd_status(args: argparse.Namespace) -> int:
    from mtl_search import jobs

    print(jobs.describe(jobs.job_info(jobs.connect(args.address), args.job_id)))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from mtl_search import jobs

    client = jobs.connect(args.address)
    if args.follow:
        final = jobs.follow(client, args.job_id)
        print(jobs.describe(final), file=sys.stderr)
        return jobs.exit_code(final)
    jobs.job_info(client, args.job_id)  # a clear error for an unknown id
    print(client.get_job_logs(args.job_id), end="")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from mtl_search import jobs

    client = jobs.connect(args.address)
    jobs.job_info(client, args.job_id)
    stopped = client.stop_job(args.job_id)
    print(f"job {args.job_id}: {'stopping' if stopped else 'had already ended'}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "select": cmd_select,
    "submit": cmd_submit, "status": cmd_status, "logs": cmd_logs, "stop": cmd_stop,
    "leaderboard": cmd_leaderboard, "compare": cmd_compare, "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except NothingToDo as exc:
        print(exc)
        return EXIT_OK
    except Interrupted as exc:
        where = f" continue with: mtl-search resume {exc.result_dir}" if exc.result_dir else ""
        print(f"interrupted ({signal.Signals(exc.signum).name}): the finished trials are kept; nothing is presented "
              f"as a final result.{where}", file=sys.stderr)
        return 128 + exc.signum
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

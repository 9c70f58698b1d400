"""`python -m midikit evaluate`: how good is a run's music? Its held-out loss on the validation
songs, and pieces generated until the model ends them against the training data, as a table; the
report is saved beside the run (outputs/quality/<run_id>.json and .png) and in its run.json."""

from __future__ import annotations

import argparse

from ..configs import QualityConfig
from ..settings import add_flags, from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, QualityConfig)


def run(args: argparse.Namespace) -> int:
    config = from_args(QualityConfig, args).validate()
    config.sample_config()  # a bad sampling value fails before anything is loaded

    from ..evaluate import format_table, run_report

    report = run_report(config)
    print(format_table(report))
    for kind, path in report.files.items():
        print(f"{kind}: {path}")
    return 0

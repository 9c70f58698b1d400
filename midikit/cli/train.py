"""`python -m midikit train`: every TrainConfig field as a flag (the original project's names included), plus
the model sizes, which override the preset's when given. Builds the configs and calls train()."""

from __future__ import annotations

import argparse
import os

from ..configs import ModelConfig, TrainConfig
from ..settings import add_flags, from_args, given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups = add_flags(parser, TrainConfig)
    add_flags(parser, ModelConfig, optional_overrides=True, groups=groups)  # sizes override the preset's


def run(args: argparse.Namespace) -> int:
    from ..train import train

    result = train(from_args(TrainConfig, args), model_overrides=given(ModelConfig, args))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return 0
    for name, path in result.artifacts.items():
        print(f"  {name:<13} {path}")
    if result.status == "time_budget":
        print(f"The time budget of this command (max_minutes) ended it at step {result.steps}; the same command "
              "continues this run for another budget.")
        return 0
    if result.status == "interrupted":
        print("Interrupted; the same command continues this run (--resume auto).")
        return 130
    if result.status == "taken_over":
        print("Another runtime took this run over; this one stopped without saving.")
        return 3
    return 0

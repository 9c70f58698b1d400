"""The command line as generated from the config declarations: every setting has its flag, the
seed's spellings work, and `--help` answers without importing torch or miditok."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from midikit.cli import build_parser, join_negative_values
from midikit.configs import GenerateConfig, ModelConfig, PreprocessConfig, SampleConfig, TrainConfig
from midikit.errors import ConfigError
from midikit.settings import declared, from_args, given


def flags_of(command: str) -> set[str]:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    return {option for action in sub._actions for option in action.option_strings}


@pytest.mark.parametrize("command, configs", [
    ("train", (TrainConfig, ModelConfig)), ("generate", (GenerateConfig, SampleConfig)),
    ("preprocess", (PreprocessConfig,)),
])
def test_every_setting_has_its_flag(command, configs):
    flags = flags_of(command)
    for config in configs:
        for f in fields(config):
            if declared(f).cli:
                assert (declared(f).flag or f"--{f.name}") in flags, (command, f.name)


def test_the_seeds_spellings_reach_the_same_fields():
    parser = build_parser()
    args = parser.parse_args(["train", "--model_type", "transformer", "--transformer_layers", "8", "--epochs", "20"])
    assert from_args(TrainConfig, args).epochs == 20 and given(ModelConfig, args) == {"num_layers": 8}
    args = parser.parse_args(["generate", "--model_path", "m.pth", "--generate_length", "100", "--seed_midi_file",
                              "a.mid"])
    assert (from_args(GenerateConfig, args).run, from_args(GenerateConfig, args).seed_midi) == ("m.pth", "a.mid")
    for command in ("generate", "evaluate"):  # one flag chooses a run in both; midikit's old --model still works
        for flag in ("--run", "--model", "--model_path"):
            assert parser.parse_args([command, flag, "lstm_20261128_214500"]).run == "lstm_20261128_214500"
    assert from_args(SampleConfig, args).num_tokens == 100
    args = parser.parse_args(join_negative_values(["preprocess", "--transpositions", "-5,-3,-1,0,1,3,5"]))
    assert from_args(PreprocessConfig, args).transpositions == (-5, -3, -1, 0, 1, 3, 5)


def test_model_sizes_override_only_when_given():
    args = build_parser().parse_args(["train", "--hidden_size", "64"])
    assert given(ModelConfig, args) == {"hidden_size": 64}
    assert from_args(TrainConfig, args).batch_size is None  # the preset's, decided later


def test_help_imports_neither_torch_nor_miditok():
    probe = ("import sys\nfrom midikit.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    "
             "pass\nprint('torch' in sys.modules, 'miditok' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().endswith("False False"), done.stderr
    assert "--eval_windows" in done.stdout and "--takeover" in done.stdout and "--transformer_layers" in done.stdout


def test_checking_every_config_imports_neither_torch_nor_miditok():
    # What a form does on every keystroke: it must stay a matter of milliseconds.
    probe = ("import sys\nfrom midikit import configs\n"
             "configs.PreprocessConfig(source='corpus', bpe_vocab=1000, seq_length=256).validate()\n"
             "configs.TrainConfig(max_minutes=5).validate()\nconfigs.SampleConfig().validate()\n"
             "configs.GenerateConfig(seed_midi='a.mid', seed_bars=4).validate()\nconfigs.QualityConfig().validate()\n"
             "configs.ModelConfig(vocab_size=500).validate()\n"
             "print('torch' in sys.modules, 'miditok' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False False", done.stdout + done.stderr


def test_bars_of_a_primer_without_a_primer_is_refused():
    with pytest.raises(ConfigError, match="seed_bars=4 keeps bars of a primer, but no primer was given"):
        GenerateConfig(seed_bars=4).validate()

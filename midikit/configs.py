"""The config objects every face builds and every worker takes: `ModelConfig`, `TrainConfig`,
`SampleConfig`, `GenerateConfig` and `PreprocessConfig`. Each field declares its help, its valid
values and its form label once (`midikit.settings.setting`); the CLI flags and the notebook forms
are generated from these declarations.

No torch and no miditok are imported here, so `python -m midikit --help`, the forms and
preprocessing's argument checks stay fast.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import ConfigError
from .settings import Checked, declared, setting

MODEL_TYPES = ("lstm", "gru", "transformer")
RNN_TYPES = ("lstm", "gru")
POSITION_ENCODINGS = ("learned", "rope")
PRESET_NAMES = ("large", "t4", "small", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("auto", "on", "off")
STRATEGIES = ("greedy", "top_k", "top_p", "temperature", "sample")
# The generation defaults of `generate`, the notebooks and `evaluate` (one set, measured for every model type in
# bench/results/quality_cpu.md): the model's own distribution at temperature 0.95, nothing truncated, so a piece
# ends when the model ends it; room for a whole tune (a Nottingham tune is about 1,650 REMI or 520 BPE-1000 tokens).
DEFAULT_STRATEGY, DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS = "temperature", 0.95, 2048


def describe_sampling(strategy: str, p: float, k: int, temperature: float) -> str:
    """How pieces are sampled, in the strategy's own terms ("temperature 0.95", "top_p, p 0.9, temperature 1.0")."""
    if strategy in ("greedy", "sample"):  # sample: the model's own distribution, untempered
        return strategy
    if strategy == "temperature":
        return f"temperature {temperature}"
    own = f"p {p}" if strategy == "top_p" else f"k {k}"
    return f"{strategy}, {own}, temperature {temperature}"
TOKENIZERS = ("REMI", "TSD", "MIDILike")  # single-stream, one vocabulary
TRACK_MODES = ("merged", "separate")
SOURCES = ("folder", "nottingham", "corpus")
ROOT_HELP = "the checkpoint folder that holds every dataset"
ROOT_DEFAULT = ("$MIDIKIT_ROOT, else the folder chosen in notebook 01, else MyDrive/midikit_checkpoints in Colab, else "
                "./midikit_data")


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig(Checked):
    """Everything needed to rebuild a model. Saved inside every checkpoint, sidecar and run.json."""

    model_type: str = setting("lstm", "model architecture", choices=MODEL_TYPES, cli=False)
    vocab_size: int = setting(0, "tokens in the vocabulary (from the dataset)", ge=0, cli=False)
    context_length: int = setting(100, "tokens the model sees at once (the original project's seq_length)",
                                  group="model", gt=0, none="the dataset's seq_length")
    dropout: float = setting(0.2, "dropout probability", group="model", ge=0.0, lt=1.0)
    embed_size: int = setting(128, "token embedding size", group="model", gt=0, model_types=RNN_TYPES)
    hidden_size: int = setting(256, "hidden state size per layer", group="model", gt=0, model_types=RNN_TYPES)
    num_layers: int = setting(2, "stacked layers", group="model", gt=0, seed_flags=("transformer_layers",))
    d_model: int = setting(256, "width of the Transformer", group="model", gt=0, model_types=("transformer",))
    nhead: int = setting(4, "attention heads (must divide d_model)", group="model", gt=0, model_types=("transformer",))
    dim_feedforward: int = setting(1024, "feed-forward width", group="model", gt=0, model_types=("transformer",))
    # rope by default: 37% lower held-out loss per note than learned at equal tokens (bench/results/quality_cpu.md);
    # configs saved without this field (midikit 0.1) load as "learned" (LEGACY_VALUES).
    positions: str = setting("rope", "how the Transformer knows where a token is: rope (rotary, relative; generation "
                             "rolls its window on without re-priming) or learned (absolute, the original project's; "
                             "generation re-primes its window past the context)", group="model",
                             choices=POSITION_ENCODINGS, model_types=("transformer",), none="rope")
    song_clock: bool = setting(False, "the model also sees how far into the piece each token is (tokens since the "
                               "piece's start, in buckets about 6% wide), so it learns where a tune ends",
                               group="model", flag="--song_clock")
    tie_embeddings: bool = setting(False, "the output layer reuses the token embedding's weights (fewer parameters; an "
                                   "RNN needs embed_size == hidden_size)", group="model", flag="--tie_embeddings")


    def check(self) -> None:
        if self.vocab_size <= 0:
            raise ConfigError(f"vocab_size must be a positive integer, got {self.vocab_size!r} "
                              "(it comes from the preprocessed dataset).")
        if self.model_type == "transformer" and self.d_model % self.nhead:
            divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            raise ConfigError(f"nhead={self.nhead} does not divide d_model={self.d_model}; choose nhead from "
                              f"{divisors[-6:]} or change d_model.")
        head_dim = self.d_model // self.nhead
        if self.model_type == "transformer" and self.positions == "rope" and head_dim % 2:
            raise ConfigError(f"positions='rope' rotates pairs of features, but d_model/nhead = "
                              f"{self.d_model}/{self.nhead} = {head_dim} is odd; choose d_model and nhead with an even "
                              "quotient, or positions='learned'.")
        if self.model_type in RNN_TYPES and self.tie_embeddings and self.embed_size != self.hidden_size:
            raise ConfigError(f"tie_embeddings needs embed_size == hidden_size for an RNN (got {self.embed_size} and "
                              f"{self.hidden_size}): set both to the same size, or tie_embeddings=False.")

    def to_dict(self) -> dict:
        return asdict(self)

    # What a config saved before a field existed meant, whatever that field's default is now.
    LEGACY_VALUES = {"positions": "learned", "song_clock": False, "tie_embeddings": False}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"Unknown model config keys {sorted(unknown)}; "
                              "this checkpoint may come from a newer midikit.")
        return cls(**{**cls.LEGACY_VALUES, **data}).validate()


def applies_to(name: str, model_type: str) -> bool:
    """Whether a ModelConfig field means anything for `model_type` (unused ones stay blank in tables)."""
    types = {f.name: declared(f).model_types for f in fields(ModelConfig)}[name]
    return types is None or model_type in types


def model_fields(model_type: str) -> tuple[str, ...]:
    """The ModelConfig fields a user sets for `model_type`, in declaration order."""
    return tuple(f.name for f in fields(ModelConfig) if declared(f).cli and applies_to(f.name, model_type))


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig(Checked):
    """How to train. Model sizes live in `ModelConfig` (from a preset unless given). A resumed run
    keeps what defines it (batches, learning-rate curve and horizon: `kept_on_resume()`)."""

    dataset: str = setting("nottingham", "preprocessed dataset name", group="data", kept_on_resume=False)
    checkpoint_dir: str | None = setting(None, ROOT_HELP, group="data", none=ROOT_DEFAULT, kept_on_resume=False)
    val_split: float | None = setting(None, "only checked against the dataset's split (the split is made by "
                                      "`midikit preprocess`)", group="data", gt=0.0, lt=1.0, none="the dataset's",
                                      kept_on_resume=False)
    subsample_ratio: float = setting(1.0, "share of the training tokens one epoch covers", group="data", gt=0.0, le=1.0,
                                     kept_on_resume=True)
    model_type: str = setting("lstm", "model architecture", group="model", choices=MODEL_TYPES, kept_on_resume=True)
    preset: str | None = setting(None, "model sizes, batch size and learning rate", group="model", choices=PRESET_NAMES,
                                 none="chosen for this hardware", kept_on_resume=True)
    epochs: int = setting(20, "passes over the training tokens", group="training", label="epochs", gt=0,
                          kept_on_resume=True)
    batch_size: int | None = setting(None, "windows per step", group="training", gt=0, none="the preset's",
                                     kept_on_resume=True)
    lr: float | None = setting(None, "peak learning rate", group="training", gt=0.0, none="the preset's",
                               kept_on_resume=True)
    weight_decay: float = setting(0.01, "AdamW weight decay (matrices and embeddings only)", group="training", ge=0.0,
                                  kept_on_resume=True)
    warmup_steps: int | None = setting(None, "linear warm-up steps before the cosine decay", group="training", ge=0,
                                       none="5% of the run, at most 200", kept_on_resume=True)
    max_steps: int | None = setting(None, "stop after this many optimizer steps", group="training", gt=0,
                                    label="max_steps", none="no limit", kept_on_resume=True)
    max_minutes: float | None = setting(None, "minutes this command trains (not the run's total): at the budget the "
                                        "run saves and ends resumable, and the same command continues it for another "
                                        "budget", group="training", gt=0.0, label="max_minutes (this session)",
                                        none="no limit", kept_on_resume=False)
    max_batches: int | None = setting(None, "cap on steps per epoch", group="training", gt=0, none="no cap",
                                      kept_on_resume=True)
    grad_clip: float = setting(1.0, "gradient norm clipping (0: off)", group="training", ge=0.0, kept_on_resume=True)
    seed: int = setting(42, "random seed of weights, batches and dropout", group="training", ge=0, lt=2**32,
                        kept_on_resume=True)
    patience: int = setting(5, "evaluations without a new best before stopping (0: never stop early)",
                            group="evaluation", label="patience (evaluations)", ge=0, kept_on_resume=False)
    eval_every: int | None = setting(None, "steps between evaluations", group="evaluation", gt=0, label="eval_every",
                                     none="once per epoch", kept_on_resume=True)
    eval_windows: int = setting(256, "validation windows per evaluation, spread over the whole split",
                                group="evaluation", label="validation windows", gt=0, kept_on_resume=True)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", group="hardware", kept_on_resume=False)
    precision: str = setting("auto", "auto: bf16 on GPUs that have it, fp16 on older ones, fp32 on the CPU",
                             group="hardware", choices=PRECISIONS, kept_on_resume=False)
    compile: str = setting("auto", "torch.compile (auto: the Transformer on CUDA)", group="hardware",
                           choices=COMPILE_MODES, kept_on_resume=False)
    checkpoint_every_minutes: float = setting(10.0, "minutes between checkpoints (0: off)", group="checkpoints",
                                              label="checkpoint every (minutes)", ge=0.0, kept_on_resume=False)
    checkpoint_every_steps: int = setting(0, "steps between checkpoints (0: off)", group="checkpoints", ge=0,
                                          kept_on_resume=False)
    keep_last: int = setting(2, "step checkpoints kept (best.pt is kept besides)", group="checkpoints", ge=1,
                             kept_on_resume=False)
    final_wait_minutes: float = setting(10.0, "how long the end of a run waits for its last checkpoint to reach the "
                                        "disk, then says what was and was not saved", group="checkpoints", ge=0.0,
                                        kept_on_resume=False)
    resume: str = setting("auto", "auto: continue the newest unfinished run of this model type; never; or a checkpoint "
                          "file or run folder", group="checkpoints", kept_on_resume=False)
    takeover: bool = setting(False, "continue a run even though another runtime's heartbeat says it is still "
                             "training it (that runtime then stops writing)", group="checkpoints", kept_on_resume=False)
    extend: bool = setting(False, "continue a run past the horizon it was planned with (new --max_steps/--epochs): the "
                           "learning rate goes on from where it is and decays over the new horizon; with --resume auto "
                           "and nothing unfinished, the newest finished run goes on", group="checkpoints",
                           kept_on_resume=False)
    progress: bool = setting(True, "no progress bar (log lines only)", group="hardware", flag="--no_progress",
                             kept_on_resume=False)

    def check(self) -> None:
        if not self.resume:
            raise ConfigError("resume must be 'auto', 'never' or a path to a checkpoint or run folder.")

    def to_dict(self) -> dict:
        return asdict(self)


def kept_on_resume(kept: bool = True) -> tuple[str, ...]:
    """The TrainConfig fields a resumed run keeps from its checkpoint whatever is asked now (they fix its
    batches, its learning-rate curve and its horizon: `kept_on_resume=True` in their declaration), or,
    with `kept=False`, those that follow the session (where and how it runs, saves and stops)."""
    return tuple(f.name for f in fields(TrainConfig) if declared(f).kept_on_resume is kept)


# --------------------------------------------------------------------------- generation


@dataclass
class SampleConfig(Checked):
    """How to sample. `temperature` divides the logits for top_k, top_p and temperature; `sample`
    draws from the model's own distribution. `num_tokens` is the most new tokens per sample (a
    sample ends earlier when the model ends the piece); `bars`, if set, replaces it."""

    strategy: str = setting(DEFAULT_STRATEGY, "how the next token is chosen (the original project's default was "
                            "greedy)", group="sampling", choices=STRATEGIES)
    k: int = setting(8, "top_k: tokens to keep", group="sampling", label="k (top_k)", ge=1)
    p: float = setting(0.9, "top_p: probability mass to keep", group="sampling", label="p (top_p)", gt=0.0, le=1.0,
                       hint="Try 0.9.")
    temperature: float = setting(DEFAULT_TEMPERATURE, "below 1 is safer, above 1 wilder", group="sampling", gt=0.0,
                                 hint="1.0 samples the model as trained; "
                                      "--strategy greedy takes the most likely tokens.")
    keep_end: bool = setting(True, "let top_k/top_p cut the end-of-piece token like any other (by default it is never "
                             "cut: a piece ends when the model ends it, with the model's own probability)",
                             group="sampling", flag="--cut_end")
    num_tokens: int = setting(DEFAULT_MAX_TOKENS, "most tokens to generate per piece (a piece ends earlier when the "
                              "model ends it)", group="sampling", label="tokens to generate (cap)", ge=1,
                              seed_flags=("generate_length",))
    bars: int | None = setting(None, "generate this many bars instead of num_tokens", group="sampling", ge=1,
                               label="bars", none="use num_tokens")
    num_samples: int = setting(1, "pieces, generated in one batch", group="sampling", label="variations", ge=1)
    seed: int | None = setting(None, "random seed, for the same music again", group="sampling", ge=0, lt=2**63,
                               none="random")


@dataclass
class RunChoice(Checked):
    """Which run a command works with, and where: `generate` and `evaluate` choose a run the same way."""

    run: str = setting("latest", "'latest' (the newest run with best weights, finished or not), a run id, 'starter' "
                       "(the model shipped with midikit), or a .pth, its .json sidecar, a training-state .pt or a run "
                       "folder",
                       group="run", aliases=("model",), seed_flags=("model_path",))
    model_type: str | None = setting(None, "with --run latest: the newest run of this type", group="run",
                                     choices=MODEL_TYPES, none="any")
    dataset: str = setting("nottingham", "dataset name under the checkpoint folder", group="run")
    checkpoint_dir: str | None = setting(None, ROOT_HELP, group="run", none=ROOT_DEFAULT)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", group="run")


@dataclass
class GenerateConfig(RunChoice):
    """Which run to generate from, and where (the sampling itself is a SampleConfig)."""

    seed_midi: str | None = setting(None, "a MIDI file to continue (its opening is kept, then the model continues it)",
                                    group="run", seed_flags=("seed_midi_file",), none="start from nothing")
    seed_bars: int | None = setting(None, "bars of --seed_midi to keep before the model continues", group="run", gt=0,
                                    label="bars of the primer to keep", none="the whole file")

    def check(self) -> None:
        if self.seed_bars is not None and not self.seed_midi:
            raise ConfigError(f"seed_bars={self.seed_bars} keeps bars of a primer, but no primer was given: pass "
                              "--seed_midi FILE (in notebook 07: upload one or type its path), or leave seed_bars out.")


@dataclass
class QualityConfig(RunChoice):
    """How `python -m midikit evaluate` judges a run: its held-out loss on the validation songs,
    and `pieces` pieces generated until the model ends them (at most `max_tokens` each) against the
    training data."""

    pieces: int = setting(16, "pieces to generate, in one batch", group="generation", label="pieces", ge=1)
    max_tokens: int = setting(DEFAULT_MAX_TOKENS, "most tokens per piece; a piece ends when the model emits EOS (a "
                              "Nottingham tune is about 1,650 REMI tokens)", group="generation",
                              label="tokens per piece (cap)", ge=1)
    strategy: str = setting(DEFAULT_STRATEGY, "how the next token is chosen", group="generation", choices=STRATEGIES)
    p: float = setting(0.95, "top_p: probability mass to keep", group="generation", label="p (top_p)", gt=0.0, le=1.0)
    k: int = setting(8, "top_k: tokens to keep", group="generation", label="k (top_k)", ge=1)
    temperature: float = setting(DEFAULT_TEMPERATURE, "divides the logits (top_k, top_p, temperature)",
                                 group="generation", gt=0.0)
    keep_end: bool = setting(True, "let top_k/top_p cut the end-of-piece token like any other (by default it is never "
                             "cut: a piece ends when the model ends it)", group="generation", flag="--cut_end")
    seed: int = setting(0, "random seed of the pieces: the same seed gives the same pieces", group="generation",
                        ge=0, lt=2**63)
    data_pieces: int = setting(64, "training pieces the generated ones are compared with", group="data", ge=1)
    val_songs: int | None = setting(None, "validation songs whose loss is measured", group="data", gt=0,
                                    none="all of them")
    save: bool = setting(True, "do not save the report (JSON, figure, run.json)", group="run", flag="--no_save")

    def sample_config(self) -> SampleConfig:
        """The sampling of the report's pieces."""
        return SampleConfig(strategy=self.strategy, k=self.k, p=self.p, temperature=self.temperature,
                            keep_end=self.keep_end, num_tokens=self.max_tokens, num_samples=self.pieces,
                            seed=self.seed).validate()


# --------------------------------------------------------------------------- preprocessing


@dataclass
class PreprocessConfig(Checked):
    """Everything `python -m midikit preprocess` takes. `source` None means "folder" when
    `input_dir` is given, else "nottingham" (the original project's default, downloaded once)."""

    input_dir: str | None = setting(None, "folder of .mid/.midi/.abc files, searched recursively",
                                    group="source (one of)", label="folder of MIDI/ABC files", none="no folder")
    source: str | None = setting(None, "nottingham: download the original project's dataset; corpus: music21's bundled "
                                 "folk tunes, offline; folder: --input_dir", group="source (one of)", choices=SOURCES,
                                 none="folder with --input_dir, else nottingham")
    dataset: str = setting("nottingham", "dataset name: the folder under the checkpoint root", group="dataset",
                           label="dataset name")
    checkpoint_dir: str | None = setting(None, ROOT_HELP, group="dataset", label="checkpoint folder",
                                         none=ROOT_DEFAULT)
    val_split: float = setting(0.05, "share of source files held out for validation", group="dataset",
                               label="validation share", gt=0.0, lt=1.0, hint="The original project uses 0.05.")
    transpositions: tuple = setting((-5, -3, -1, 0, 1, 3, 5), "semitone shifts applied to the training files",
                                    group="tokens", label="transpositions (semitones)")
    augment_validation: bool = setting(False, "transpose the validation files too", group="tokens")
    seq_length: int = setting(100, "default context length recorded for training", group="tokens", gt=0)
    limit: int | None = setting(None, "use only the first N files (quick runs)", group="dataset",
                                label="limit (first N files)", gt=0, none="all files")
    tokenizer: str = setting("REMI", "miditok tokenizer", group="tokens", choices=TOKENIZERS,
                             hint="Multi-vocabulary tokenizers such as CPWord or Octuple do not give one token stream.")
    tracks: str = setting("merged", "merged: one sequence per tune with Program tokens (melody and chords together); "
                          "separate: one sequence per track, as the original project", group="tokens",
                          choices=TRACK_MODES)
    tokenizer_params: dict = setting(help="extra miditok TokenizerConfig options as JSON, e.g. "
                                          "'{\"use_time_signatures\": true}'", group="tokens", default_factory=dict)
    seed: int = setting(42, "seed of the train/validation split", group="dataset", ge=0)
    workers: int | None = setting(None, "worker processes", group="dataset", gt=0, none="all CPU cores")
    bpe_vocab: int | None = setting(None, "learn miditok BPE merges on the training split up to this vocabulary size "
                                    "(more music per context; bench/results/quality_cpu.md: 1000 with rotary positions "
                                    "and context 256 was the best CPU model)", group="tokens", label="BPE vocabulary",
                                    gt=0, le=65536, none="none: plain tokens")

    def __post_init__(self):
        if self.source is None:
            self.source = "folder" if self.input_dir else "nottingham"
        if isinstance(self.transpositions, str):
            self.transpositions = parse_transpositions(self.transpositions)
        if isinstance(self.tokenizer_params, str):
            self.tokenizer_params = parse_json_object("tokenizer_params", self.tokenizer_params)

    def check(self) -> None:
        """The source, the transpositions and the dataset's name. The tokenizer's options are checked by
        miditok itself when preprocessing starts (`midikit.data.preprocess`), before any file is read:
        configs import neither torch nor miditok, so a form checks a value in milliseconds."""
        from .storage import DatasetPaths

        if self.source == "folder" and not self.input_dir:
            raise ConfigError("source='folder' needs input_dir: pass --input_dir DIR "
                              "(a folder of .mid/.midi/.abc files).")
        if self.source != "folder" and self.input_dir:
            raise ConfigError(f"Pass either --input_dir or --source {self.source}, not both.")
        self.transpositions = tuple(sorted({_as_int("transpositions", k) for k in self.transpositions}))
        if not self.transpositions:
            raise ConfigError("transpositions is empty: give at least 0 (no augmentation), e.g. --transpositions 0.")
        if self.tokenizer_params and not all(isinstance(key, str) for key in self.tokenizer_params):
            raise ConfigError(f"tokenizer_params must map option names to values, got {self.tokenizer_params!r}.")
        DatasetPaths(Path("."), self.dataset)  # validates the name

    def command(self, root: Path) -> str:
        """The equivalent `python -m midikit preprocess` command line (stored in config.json)."""
        args = ["python", "-m", "midikit", "preprocess", "--checkpoint_dir", str(root), "--dataset", self.dataset]
        if self.source == "folder":
            args += ["--input_dir", str(Path(self.input_dir).expanduser().absolute())]
        else:
            args += ["--source", self.source]
        defaults = PreprocessConfig()
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name in ("source", "input_dir", "dataset", "checkpoint_dir", "workers")
                    or value == getattr(defaults, f.name)):
                continue
            if f.name == "augment_validation":
                args.append("--augment_validation")
            elif f.name == "transpositions":  # `=` keeps the leading minus from reading as a flag
                args.append("--transpositions=" + ",".join(map(str, value)))
            else:
                args += [f"--{f.name}", json.dumps(value) if f.name == "tokenizer_params" else str(value)]
        return shlex.join(args)


def parse_transpositions(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise ConfigError("transpositions must be comma-separated semitones such as -5,-3,-1,0,1,3,5, "
                          f"got {text!r}.") from exc


def parse_json_object(name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a JSON object, got {text!r} ({exc}).") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object such as '{{\"use_time_signatures\": true}}', got {text!r}.")
    return value


def _as_int(name: str, value) -> int:
    from .settings import plain

    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be integers, got {value!r}.")
    return value

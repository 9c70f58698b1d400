"""Generate music from a trained run: load it, sample token by token, decode to MIDI.

    run = load_run("latest", paths)              # or a .pth, its .json sidecar, a training-state .pt
    result = generate(run, SampleConfig(strategy="top_p", num_tokens=512, num_samples=4))
    result.midi_paths                             # <root>/<dataset>/outputs/generated/*.mid

The Transformer decodes with its key/value cache and the RNNs carry their hidden state, so each
new token costs one position, not a re-run of the whole window. Past the trained context a
Transformer with learned positions slides its window: when the cache is full it is re-primed with
the most recent `SLIDE_KEEP` of the context; one with RoPE positions rolls its cache instead (the
newest key overwrites the oldest). Either way the music never sees a cut. Each token is one
fixed-shape step with sampling on the device (`Sampler`), which `torch.compile` can turn into a
CUDA graph (`decode(..., compile_step=...)`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoints import STATE_FORMAT, load_latest, load_state
from .configs import SampleConfig
from .errors import CheckpointError, ConfigError, GenerationError, StorageError
from .models import ModelConfig, build_model, resolve_device
from .storage import RUN_ID_PATTERN, DatasetPaths, atomic_write_bytes, timestamp

SLIDE_KEEP = 0.75  # share of the context kept when the Transformer's window slides
MAX_TOKENS_PER_BAR = 256  # safety cap when the length is given in bars
FINISHED_CHECK_EVERY = 16  # steps between checks that every sample ended (each check syncs a GPU)


# --------------------------------------------------------------------------- loading a run


@dataclass
class LoadedRun:
    model: torch.nn.Module
    model_config: ModelConfig
    tokenizer: object  # miditok tokenizer of the run's dataset
    run_id: str
    paths: DatasetPaths  # the dataset the run was trained on
    sidecar: dict  # the .json sidecar (or the same fields taken from a training-state checkpoint)
    dataset: object  # midikit.data.TokenDataset: special token ids, config, training tokens

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(source: str | Path, paths: DatasetPaths | None = None, model_type: str | None = None, device="auto",
             log=print) -> LoadedRun:
    """Load a trained model with its tokenizer.

    `source` is what `--run` takes: "latest" (the newest run under `paths` with best weights, of
    `model_type` if given, finished or not), a run id of that dataset, "starter" (the model shipped
    with midikit), a best weights `.pth` (its `.json` sidecar beside it), the sidecar itself, a
    training-state `.pt`, or a run's checkpoint folder (its newest valid checkpoint). The model is
    rebuilt from the saved ModelConfig alone; the tokenizer comes from the dataset it was trained on.
    """
    if str(source) == STARTER:
        from .starter import DATASET, load_starter

        # What it plays lands under the user's root, beside their datasets (never inside the package).
        return load_starter(device=device, paths=DatasetPaths(paths.root, DATASET) if paths is not None else None, log=log)
    path = resolve_run(source, paths, model_type, log)
    if path.is_dir() or path.suffix == ".pt":
        sidecar, state_dict = _read_training_state(path, log)
    elif path.suffix in (".pth", ".json"):
        sidecar, state_dict = _read_best_weights(path.with_suffix(".pth"), path.with_suffix(".json"))
    else:
        raise GenerationError(f"Cannot load {path}: expected a .pth (best weights), its .json sidecar or a training-state .pt.")
    try:
        model_config = ModelConfig.from_dict(sidecar["model_config"])
    except (KeyError, TypeError) as exc:
        raise GenerationError(f"{path} holds no usable model_config ({exc!r}); it was not written by midikit.") from exc
    dataset = _trained_dataset(path, sidecar, paths, model_config, log)
    model = build_model(model_config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise GenerationError(f"The weights in {path} do not fit the model config saved with them: {exc}") from exc
    model.to(resolve_device(device)).eval()
    return LoadedRun(model, model_config, dataset.tokenizer, str(sidecar.get("run_id", path.stem)), dataset.paths, sidecar,
                     dataset)


STARTER = "starter"  # --run starter: the small model shipped inside the package (midikit.starter)


def resolve_run(source: str | Path, paths: DatasetPaths | None, model_type: str | None = None, log=print) -> Path:
    """The file or folder `--run` names: "latest" is the newest run of the dataset with best weights
    (finished, stopped or still training: said which), a run id is that run's .pth, anything else a path."""
    text = str(source)
    if text == "latest" or (RUN_ID_PATTERN.match(text) and not Path(text).exists()):
        if paths is None:
            raise GenerationError(f"--run {text} names a run of a dataset: pass the dataset (paths=DatasetPaths(root, "
                                  "dataset); --checkpoint_dir and --dataset), or a .pth, .json or .pt file instead.")
        from .runs import describe_progress, playable_runs

        found = playable_runs(paths, model_type)
        if text != "latest":
            found = [record for record in found if record.run_id == text]
        if not found:
            from .data import load_dataset

            load_dataset(paths)  # a dataset that is not there says which preprocess command makes it
            raise GenerationError(_no_run_message(text, paths, model_type))
        record = found[0]
        log(f"{'latest: ' if text == 'latest' else ''}{record.run_id} ({describe_progress(record)})")
        return paths.best_weights(record.run_id)
    path = Path(source).expanduser()
    if not path.exists():
        raise GenerationError(f"Model file {path} does not exist; pass --run latest, a run id, 'starter', or the path of a "
                              ".pth, .json or .pt file.")
    return path


def _no_run_message(text: str, paths: DatasetPaths, model_type: str | None) -> str:
    if text != "latest":
        return (f"No run {text} with best weights in {paths.models}; pass --run latest, another run id of dataset "
                f"{paths.dataset!r}, or the path of a .pth, .json or .pt file.")
    kind = f"{model_type} " if model_type else ""
    return (f"No {kind}run with best weights in {paths.models} yet. Train one first (python -m midikit train --dataset "
            f"{paths.dataset} --model_type {model_type or 'lstm'}; its weights appear at its first checkpoint), pass "
            "--run starter to play the model shipped with midikit, or --run PATH to a .pth or checkpoint.")


def _trained_dataset(path: Path, sidecar: dict, paths: DatasetPaths | None, model_config: ModelConfig, log):
    """The preprocessed dataset a run was trained on (its tokenizer decodes the run's tokens)."""
    run_paths = _run_dataset_paths(path, sidecar, paths)
    from .data import load_dataset  # miditok only where needed: decode() runs on machines without it

    dataset = load_dataset(run_paths)
    if dataset.vocab_size != model_config.vocab_size:
        raise GenerationError(
            f"Run {sidecar.get('run_id')} was trained on a vocabulary of {model_config.vocab_size} tokens, but the "
            f"dataset {run_paths.base} now has {dataset.vocab_size}: it was preprocessed again with other tokenizer "
            "settings. Preprocess it with the run's settings again, or train a new model on this dataset."
        )
    trained_fingerprint = (sidecar.get("dataset") or {}).get("fingerprint")
    if trained_fingerprint and trained_fingerprint != dataset.fingerprint:
        log(f"note: dataset {run_paths.dataset} was preprocessed again since run {sidecar.get('run_id')} trained "
            "(same vocabulary size, so its tokenizer is used).")
    return dataset


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same to the user
        raise GenerationError(
            f"Cannot read {path}: the file is corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Use another run or checkpoint (for example the run's checkpoints/<run_id>/best.pt)."
        ) from exc


def _read_best_weights(weights: Path, sidecar_path: Path) -> tuple[dict, dict]:
    if not sidecar_path.is_file():
        raise GenerationError(
            f"{weights} has no sidecar {sidecar_path.name} beside it; the sidecar holds the model config needed to "
            "rebuild the model. Copy it next to the .pth, or load the run's training-state checkpoint "
            "(checkpoints/<run_id>/best.pt) instead."
        )
    if not weights.is_file():
        raise GenerationError(f"The sidecar {sidecar_path} has no weights file {weights.name} beside it.")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except ValueError as exc:
        raise GenerationError(f"The sidecar {sidecar_path} is not valid JSON ({exc}); it is corrupt or truncated.") from exc
    return sidecar, _torch_load(weights)


def _read_training_state(path: Path, log) -> tuple[dict, dict]:
    try:
        if path.is_dir():
            found = load_latest(path, log=log)
            if found is None:
                raise GenerationError(f"No valid checkpoint in {path}; pass a .pth from the dataset's models/ folder instead.")
            path, state = found
        else:
            state = load_state(path)
    except CheckpointError as exc:
        raise GenerationError(f"Cannot use the checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise GenerationError(f"{path} is not a midikit training-state checkpoint (format {STATE_FORMAT!r} expected).")
    sidecar = {
        "run_id": state.get("run_id"),
        "model_type": state["model_config"].get("model_type"),
        "model_config": state["model_config"],
        "train_config": state.get("train_config"),
        "dataset": state.get("dataset"),
        "metrics": {"best_val_loss": state.get("best_val_loss"), "steps": state.get("step"), "epochs": state.get("epoch")},
        "status": "finished" if state.get("finished") else "running",
        "checkpoint": str(path),
    }
    return sidecar, state["model"]


def _run_dataset_paths(path: Path, sidecar: dict, paths: DatasetPaths | None) -> DatasetPaths:
    """The dataset a run was trained on: the folder its files sit in when that is the standard
    layout (<root>/<dataset>/models/x.pth, <root>/<dataset>/checkpoints/<run>/x.pt) and holds
    preprocessed data, whatever the folder is called now (a copied or renamed dataset); else the
    dataset named in the sidecar under `paths`' root."""
    from .data.store import CONFIG_FILE  # miditok only where needed: decode() runs on machines without it

    name = (sidecar.get("dataset") or {}).get("name")
    path = path.absolute()
    folder = path if path.is_dir() else path.parent
    for dataset_folder in (folder.parent, folder.parent.parent):
        try:
            candidate = DatasetPaths(dataset_folder.parent, dataset_folder.name)
        except StorageError:  # "/" or "..": not a dataset folder
            continue
        in_layout = folder == candidate.models or folder.parent == candidate.checkpoints
        if in_layout and (candidate.data / CONFIG_FILE).is_file():
            return candidate
    if not name:
        raise GenerationError(f"{path} does not say which dataset it was trained on (no dataset.name).")
    if paths is not None:
        return DatasetPaths(paths.root, name)
    raise GenerationError(
        f"{path} is outside a midikit folder layout, so its dataset {name!r} cannot be found; "
        "pass --checkpoint_dir ROOT (the folder that holds the dataset)."
    )


# --------------------------------------------------------------------------- sampling


def next_tokens(logits: torch.Tensor, sample: SampleConfig, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, keep_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row of `logits` (B, vocab) with the sample's strategy. Sampling adds
    Gumbel `noise` (drawn from `generator` when not given; see `gumbel_noise`). `keep_ids` (a long
    tensor): tokens top_k and top_p never cut, drawn with the probability the model gives them."""
    logits = logits.float()
    if sample.strategy == "greedy":
        return logits.argmax(-1)
    if sample.strategy != "sample":
        logits = logits / sample.temperature
    untruncated = logits
    if sample.strategy == "top_k":
        kth_best = logits.topk(min(sample.k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    elif sample.strategy == "top_p":
        # Keep the smallest set of most likely tokens whose probability reaches p (always the best one).
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs >= sample.p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    if keep_ids is not None and sample.strategy in ("top_k", "top_p"):
        logits = logits.index_copy(-1, keep_ids, untruncated.index_select(-1, keep_ids))
    if noise is None:
        noise = gumbel_noise(torch.empty_like(logits), generator)
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits), without a GPU sync.
    return (logits + noise).argmax(-1)


def gumbel_noise(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `out` in place with Gumbel(0, 1) noise (-log of Exponential(1)) and return it."""
    return out.exponential_(generator=generator).log_().neg_()


@dataclass
class Sampler:
    """`pick` for `decode` that samples on the device: decode draws the Gumbel noise from
    `generator` in blocks of FINISHED_CHECK_EVERY steps into a buffer of its own, so a decoding
    step draws nothing itself (it can be compiled or CUDA-graphed). Also callable as pick(logits)."""

    sample: SampleConfig
    generator: torch.Generator | None = None
    keep_ids: torch.Tensor | None = None  # tokens top_k/top_p never cut (generate: the end of the piece)

    def __call__(self, logits: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return next_tokens(logits, self.sample, self.generator, noise, self.keep_ids)

    @property
    def needs_noise(self) -> bool:
        return self.sample.strategy != "greedy"


class _Decoding:
    """One decode call's state, kept on the device and allocated once: the last token, how many
    tokens there are, which rows ended, bars per row, the model's cache (or RNN hidden state) and,
    for a Sampler, a block of noise. `step()` makes one token without reading anything back; its
    shapes depend on the batch and the model only, so one compiled step serves every length."""

    def __init__(self, model, prime: torch.Tensor, pick, stop_ids, banned_ids, fill_id: int, bar_ids,
                 max_bars: int | None):
        batch, prime_length = prime.shape
        device = prime.device
        self.model, self.pick, self.fill_id, self.max_bars = model, pick, fill_id, max_bars
        self.last = prime[:, -1:].clone()  # what the next step feeds the model
        self.length = torch.tensor(prime_length, device=device)  # tokens so far: picks the noise row
        self.stop_ids = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        self.bar_ids = torch.tensor(list(bar_ids), dtype=torch.long, device=device)
        self.banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device)  # made once: no copy per token
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.bars_seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.state = model.init_state(batch)
        uses_noise = isinstance(pick, Sampler) and pick.needs_noise
        self.noise = torch.empty(FINISHED_CHECK_EVERY, batch, model.config.vocab_size, device=device) if uses_noise else None

    def device_tensors(self) -> list[torch.Tensor]:
        """What a step reads and writes in place (for CUDA graphs: addresses that never change)."""
        held = [self.last, self.length, self.finished, self.bars_seen, *([self.noise] if self.noise is not None else [])]
        return held + (self.state.tensors() if hasattr(self.state, "tensors") else [])

    def draw_noise(self) -> None:
        if self.noise is not None:
            gumbel_noise(self.noise, self.pick.generator)

    def prime(self, window: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Start the model over on `window` (B, T), token `start` of the piece onwards; the token that follows it."""
        if hasattr(self.state, "reset"):
            self.state.reset(start)
        else:
            self.state = self.model.init_state(window.shape[0])
        logits, self.state = self.model.step(window, self.state)
        return self._next(logits[:, -1])

    def step(self) -> torch.Tensor:
        """The last token through the model (one position); the token that follows it."""
        logits, state = self.model.step(self.last, self.state)
        if state is not self.state:  # an RNN's new hidden state; the Transformer's cache is written in place
            self.state = state
        return self._next(logits[:, -1])

    def _next(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick, end rows at a stop token or past the last bar, fill ended rows; (B,) to append."""
        logits = logits.index_fill(-1, self.banned, float("-inf"))
        if self.noise is not None:
            token = self.pick(logits, self.noise.index_select(0, self.length.view(1) % FINISHED_CHECK_EVERY)[0])
        else:
            token = self.pick(logits)
        ends = torch.isin(token, self.stop_ids)
        if self.max_bars is not None:
            self.bars_seen.add_(torch.isin(token, self.bar_ids))
            past_last_bar = self.bars_seen > self.max_bars
            token = torch.where(past_last_bar & ~ends, self.stop_ids[0], token)
            ends = ends | past_last_bar
        written = torch.where(self.finished, self.fill_id, token)
        self.finished.logical_or_(ends)
        self.last.copy_(written[:, None])
        self.length.add_(1)
        return written


@torch.inference_mode()
def decode(model, prime: torch.Tensor, max_new_tokens: int, pick, *, stop_ids=(), banned_ids=(), fill_id: int = 0,
           bar_ids=(), max_bars: int | None = None, progress: bool = False, compile_step=None) -> torch.Tensor:
    """Extend `prime` (B, P) by up to `max_new_tokens` tokens chosen by `pick`.

    `pick` is a `Sampler` (sampling on the device, noise drawn in blocks) or any function of the
    logits (B, vocab) -> tokens (B,). Each token is one fixed-shape step through `model.step` (KV
    cache / hidden state); `compile_step` wraps that step, e.g.
    `functools.partial(torch.compile, mode="reduce-overhead")` (CUDA graphs).

    What the model sees: an RNN everything so far. A Transformer with learned positions a window
    that starts over at the last SLIDE_KEEP of its context whenever it would grow past the context
    (the cache is primed afresh): exactly what re-running `model(window)` for every token gives. A
    RoPE Transformer never starts over: its cache rolls, each layer attending to the last
    context_length positions, which is `model(sequence, window=context_length)`.

    A row ends at a token in `stop_ids` or, given `max_bars`, at the bar token that would start bar
    max_bars + 1 (written as the first stop id); later positions hold `fill_id`. Decoding stops
    early once every row has ended. Returns (B, P + steps).
    """
    length = prime.shape[1]
    config = model.config
    slides = config.model_type == "transformer" and config.positions == "learned"
    context = config.context_length
    keep = max(1, int(context * SLIDE_KEEP))
    if compile_step is not None and config.model_type != "transformer":
        raise ConfigError(f"compile_step is for the Transformer's fixed-shape step; a {config.model_type} already runs "
                          "as one fused RNN kernel per token and torch.compile cannot trace it: pass compile_step=None.")
    decoding = _Decoding(model, prime, pick, stop_ids, banned_ids, fill_id, bar_ids, max_bars)
    out = torch.empty(prime.shape[0], length + max_new_tokens, dtype=torch.long, device=prime.device)
    out[:, :length] = prime
    step = decoding.step
    if compile_step is not None:
        for tensor in decoding.device_tensors():
            torch._dynamo.mark_static_address(tensor)  # written in place: CUDA graphs may keep their addresses
        step = compile_step(decoding.step)
    window_start = 0
    for n in tqdm(range(max_new_tokens), desc="generating", unit="tok", disable=not progress, leave=False):
        if n == 0 or length % FINISHED_CHECK_EVERY == 0:
            decoding.draw_noise()
        if n == 0 or (slides and length - window_start > context):
            if slides and length - window_start > context:
                window_start = length - keep  # slide: start over from the most recent tokens
            out[:, length] = decoding.prime(out[:, window_start:length], window_start)
        else:
            out[:, length] = step()
        length += 1
        if n % FINISHED_CHECK_EVERY == FINISHED_CHECK_EVERY - 1 and bool(decoding.finished.all()):
            break
    return out[:, :length]


# --------------------------------------------------------------------------- generate


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # per sample, the ids written to its MIDI (seed + continuation, no BOS/EOS/PAD)
    midi_paths: list[Path]  # empty when save=False
    scores: list  # symusic.Score per sample
    invalid_token_share: list[float]  # miditok's tokens_errors per sample
    seconds: float  # decoding time
    tokens_per_second: float  # new tokens of all samples together per second of decoding
    seed: int = 0  # the random seed used (pass it as SampleConfig.seed to get the same music again)
    new_tokens: list[int] = field(default_factory=list)  # tokens generated per sample
    # per sample: True when it ended with EOS (the model's, or the --bars limit), False when it ran to num_tokens
    ended: list[bool] = field(default_factory=list)


def generate(run: LoadedRun, sample: SampleConfig, seed_midi: Path | None = None, save: bool = True,
             progress: bool = True, seed_bars: int | None = None) -> GenerationResult:
    """Sample `sample.num_samples` pieces in one batch, decode them to MIDI and (if `save`) write
    them to the dataset's outputs/generated/ folder. With `seed_midi`, continue that piece (its first
    `seed_bars` bars, or all of it): each piece is the primer, then the model's continuation."""
    from .data import tokens_to_score

    sample.validate()
    tokenizer, special = run.tokenizer, run.dataset  # special: bos_id, eos_id, pad_id
    bar_ids = [i for token, i in tokenizer.vocab.items() if token.startswith("Bar_")]
    if sample.bars is not None and tokenizer.is_trained:
        raise ConfigError("--bars counts Bar tokens, which this run's BPE tokenizer merges into others; use --num_tokens.")
    if sample.bars is not None and not bar_ids:
        raise ConfigError("--bars needs a tokenizer with bar tokens (e.g. REMI); this run's has none. Use --num_tokens.")
    seed_ids = _tokenize_seed(tokenizer, Path(seed_midi), seed_bars) if seed_midi is not None else []
    prime = torch.tensor([[special.bos_id] + seed_ids] * sample.num_samples, device=run.device)

    seed = sample.seed if sample.seed is not None else secrets.randbelow(2**31)  # leaves torch's global RNG alone
    generator = torch.Generator(device=run.device).manual_seed(seed)
    max_new = sample.num_tokens if sample.bars is None else sample.bars * MAX_TOKENS_PER_BAR
    started = time.perf_counter()
    out = decode(
        run.model, prime, max_new, Sampler(sample, generator, keep_ids=torch.tensor([special.eos_id], device=run.device)
                                           if sample.keep_end else None),
        stop_ids=[special.eos_id], banned_ids=[i for i in tokenizer.special_tokens_ids if i != special.eos_id],
        fill_id=special.pad_id, bar_ids=bar_ids, max_bars=sample.bars, progress=progress,
    ).tolist()  # waits for the GPU, so the time below is the decoding's
    seconds = time.perf_counter() - started

    tokens, new_tokens, ended = [], [], []
    for row in out:
        # Drop BOS and cut at EOS; PAD/BOS/MASK were never sampled and only PAD follows EOS.
        ended.append(special.eos_id in row)
        row = row[1 : row.index(special.eos_id)] if ended[-1] else row[1:]
        new_tokens.append(len(row) - len(seed_ids))
        tokens.append(row)
    scores = [tokens_to_score(tokenizer, row) for row in tokens]
    invalid = [_invalid_share(tokenizer, row) for row in tokens]

    midi_paths = []
    if save:
        run.paths.ensure()
        tag = ("cont_" if seed_midi is not None else "") + timestamp()
        for i, score in enumerate(scores):
            path = run.paths.generated_midi(run.run_id, sample.strategy, i, tag=tag)
            atomic_write_bytes(path, score.dumps_midi())
            midi_paths.append(path)
    return GenerationResult(tokens, midi_paths, scores, invalid, seconds, sum(new_tokens) / max(seconds, 1e-9), seed, new_tokens,
                            ended)


def _invalid_share(tokenizer, ids: list[int]) -> float:
    if not ids:  # a sample that ended at once (an empty piece): no token, so none invalid
        return 0.0
    errors = tokenizer.tokens_errors(ids if tokenizer.one_token_stream else [ids])
    return float(errors if tokenizer.one_token_stream else errors[0])


def _tokenize_seed(tokenizer, path: Path, bars: int | None = None) -> list[int]:
    """The seed MIDI's tokens (its first `bars` bars, or all of it) as the dataset's sequences were made
    (merged: every track in one stream; separate: one sequence per track, of which the first is continued)."""
    from .data.tokenization import describe_error, keep_bars, read_score, separate_programs

    try:
        score = read_score(path)
    except Exception as exc:  # symusic raises RuntimeError/ValueError for unreadable files
        raise GenerationError(f"Cannot read the seed MIDI {path}: {describe_error(exc, path)}. Pass a valid .mid file.") from exc
    if bars is not None:
        score = keep_bars(score, bars)
    if score.note_num() == 0:
        raise GenerationError(f"The seed MIDI {path} has no notes to continue{f' in its first {bars} bars' if bars else ''}; "
                              "pass a MIDI file with notes (or keep more bars).")
    if tokenizer.one_token_stream:
        sequences = [tokenizer.encode(separate_programs(score))]
    else:
        sequences = tokenizer.encode(score)
    ids = next((list(seq.ids) for seq in sequences if len(seq.ids)), None)
    if not ids:
        raise GenerationError(f"The seed MIDI {path} gives no tokens with this run's tokenizer (notes outside its pitch range?); pass another file.")
    return ids

"""Generate music from a trained run: load it, sample token by token, decode to MIDI.

    run = load_run("latest", paths)              # or a .pth, its .json sidecar, a training-state .pt
    result = generate(run, SampleConfig(num_samples=4))  # the defaults: temperature 0.95, up to 2,048 tokens
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

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .configs import SampleConfig
from .errors import ConfigError, GenerationError
from .storage import atomic_write_bytes, timestamp
from .trained import STARTER, LoadedRun, load_run, resolve_run  # noqa: F401 (generate's API: load, then play)

SLIDE_KEEP = 0.75  # share of the context kept when the Transformer's window slides
MAX_TOKENS_PER_BAR = 256  # safety cap when the length is given in bars
FINISHED_CHECK_EVERY = 16  # steps between checks that every sample ended (each check syncs a GPU)


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
        self.noise = (torch.empty(FINISHED_CHECK_EVERY, batch, model.config.vocab_size, device=device)
                      if uses_noise else None)

    def device_tensors(self) -> list[torch.Tensor]:
        """What a step reads and writes in place (for CUDA graphs: addresses that never change)."""
        held = [self.last, self.length, self.finished, self.bars_seen,
                *([self.noise] if self.noise is not None else [])]
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
                          "as one fused RNN kernel per token and torch.compile cannot trace it: "
                          "pass compile_step=None.")
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
        raise ConfigError("--bars counts Bar tokens, which this run's BPE tokenizer merges into others; "
                          "use --num_tokens.")
    if sample.bars is not None and not bar_ids:
        raise ConfigError("--bars needs a tokenizer with bar tokens (e.g. REMI); this run's has none. "
                          "Use --num_tokens.")
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
    return GenerationResult(tokens, midi_paths, scores, invalid, seconds, sum(new_tokens) / max(seconds, 1e-9), seed,
                            new_tokens, ended)


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
        raise GenerationError(f"Cannot read the seed MIDI {path}: {describe_error(exc, path)}. "
                              "Pass a valid .mid file.") from exc
    if bars is not None:
        score = keep_bars(score, bars)
    if score.note_num() == 0:
        raise GenerationError(f"The seed MIDI {path} has no notes to continue"
                              f"{f' in its first {bars} bars' if bars else ''}; "
                              "pass a MIDI file with notes (or keep more bars).")
    if tokenizer.one_token_stream:
        sequences = [tokenizer.encode(separate_programs(score))]
    else:
        sequences = tokenizer.encode(score)
    ids = next((list(seq.ids) for seq in sequences if len(seq.ids)), None)
    if not ids:
        raise GenerationError(f"The seed MIDI {path} gives no tokens with this run's tokenizer "
                              "(notes outside its pitch range?); pass another file.")
    return ids

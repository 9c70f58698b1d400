"""The GPU check, rehearsed on the CPU, and what it checks on a GPU that the CPU can show too.

`python bench/gpu_check.py --device cpu --quick --out DIR` runs every part with tiny models: each
writes its lines. A part killed by its own limit, and the whole check killed from outside in the
middle of a part, leave every earlier line in the results file; a preflight whose torch.compile
really fails (this process has no C compiler) says so in one line and the rest runs uncompiled; a
budget too small for a part drops it with a line that says so.
Then the checkpoint pool's buffers: made on the pool's own thread, and the ones a save uses; and
the RNN's recurrent core: the precision the start line states is the one it runs in.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--quick"]
WAIT_S = 900  # a generous bound for a busy machine; the rehearsal needs about 65 CPU-seconds


def check_env(**changes) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **changes)


def results_of(out: Path) -> str:
    (path,) = out.glob("gpu_check_*.md")
    return path.read_text()


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The whole rehearsal, started at once: it runs beside the kill test below."""
    out = tmp_path_factory.mktemp("rehearsal")
    process = subprocess.Popen([*CHECK, "--out", str(out)], env=check_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    yield process, out
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def test_a_broken_compiler_one_line_then_a_part_past_its_limit_then_a_kill_from_outside(rehearsal, tmp_path):
    out = tmp_path / "out"
    no_compiler = check_env(CC="/nonexistent/cc", CXX="/nonexistent/c++")  # beneath torch.compile: no C/C++ compiler
    process = subprocess.Popen([*CHECK, "--out", str(out), "--parts", "path,throughput", "--limits", "path=3"],
                               env=no_compiler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + WAIT_S
    while not (out.is_dir() and "## 2. Training throughput" in results_of_or_empty(out)):
        assert process.poll() is None and time.monotonic() < deadline, results_of_or_empty(out)
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the check itself, in the middle of its throughput part
    process.wait()

    text = results_of(out)
    compile_lines = [line for line in section(text, "## Preflight").splitlines() if "torch.compile" in line]
    assert len(compile_lines) == 1, compile_lines
    assert "**FAILED**" in compile_lines[0] and "no working C++ compiler" in compile_lines[0]
    assert "/nonexistent/c++" in compile_lines[0] and "the rest of this check runs uncompiled" in compile_lines[0]
    assert "- nvidia-smi:" in text and "- machine:" in text  # the preflight's lines before it
    assert "**timed out after 3 s** (its limit)" in section(text, "## 1. The GPU path")
    assert "Total" not in text  # killed before its end: what it had is there
    scratch = Path(re.search(r"progress log: (\S+)", text).group(1)).parent
    assert not processes_mentioning(str(scratch)), "a part outlived the check that was killed"


def test_a_budget_too_small_for_a_part_drops_it_and_says_so(rehearsal, tmp_path):
    no_compiler = check_env(CC="/nonexistent/cc", CXX="/nonexistent/c++")  # the preflight fails fast
    finished = subprocess.run([*CHECK, "--out", str(tmp_path), "--parts", "path,stall", "--budget_s", "1"],
                              env=no_compiler, capture_output=True, text=True, timeout=WAIT_S)
    assert finished.returncode == 0, finished.stderr
    text = results_of(tmp_path)
    for heading, needs in (("## 1. The GPU path", 60), ("## 2. Checkpoint stall", 25)):
        assert re.search(rf"- \*\*dropped\*\*: 0 s of the 1 s budget left, it needs {needs} s", section(text, heading))
    assert "Total" in text


def results_of_or_empty(out: Path) -> str:
    found = list(out.glob("gpu_check_*.md")) if out.is_dir() else []
    return found[0].read_text() if found else ""


def processes_mentioning(text: str, wait_s: float = 10.0) -> list[str]:
    """Command lines of live processes that mention `text` (a dying one gets `wait_s` to go)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(command)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_rehearsal_runs_every_part_and_each_writes_its_lines(rehearsal):
    process, out = rehearsal
    assert process.wait(timeout=WAIT_S) == 0, process.stderr.read()
    text = results_of(out)
    assert "timed out" not in text and "**failed**" not in text and "dropped" not in text, text
    preflight = section(text, "## Preflight")
    assert ("- nvidia-smi:" in preflight and "- machine:" in preflight
            and "torch.compile of a tiny cpu function" in preflight)

    path = section(text, "## 1. The GPU path")
    assert re.search(r"- transformer \(fp32\): killed with SIGKILL after its step-(\d+) checkpoint.*"
                     r"resumed it at step \1 and ran to step 60: exit 0", path), path
    assert re.search(r"- lstm \(fp32, recurrent core fp32\): 20 steps on cpu, exit 0", path), path
    assert re.search(r"- gru \(fp32, recurrent core fp32\): started on the CPU .* to step 12: exit 0", path), path
    for model_type in ("transformer", "lstm", "gru"):
        assert f"- {model_type} generates:" in path
    assert len(re.findall(r"recurrent core on cpu under fp32: fp32, as its start line says", path)) == 2, path

    throughput = section(text, "## 2. Training throughput")
    for model_type in ("lstm", "gru", "transformer"):
        assert re.search(rf"^\| {model_type} \| cpu \| .* \| [\d.]+x \| — \|$", throughput, re.M), throughput
    generation = section(text, "## 3. Generation speed")
    assert "| transformer | cpu | learned |" in generation and "| transformer | cpu | rope |" in generation
    assert "| lstm | cpu | — |" in generation
    stall = section(text, "## 4. Checkpoint stall")
    assert "made on thread `midikit-snapshot-pool`" in stall and "a save holds training: first" in stall
    assert re.search(r"Total \d+ s \(budget 1200 s\)", text)


# --------------------------------------------------------------------------- the pool's thread


def test_the_state_pool_is_filled_on_its_own_thread_and_the_first_save_uses_those_buffers():
    """Through the Recorder: a run opened on a store, one training step, one save."""
    from midikit import checkpoints
    from midikit.snapshots import SnapshotPool
    from midikit.train import TrainConfig, train_step
    from midikit.train.recorder import Recorder
    from midikit.train.setup import build_training, capture_rng_state
    from midikit.train.start import claim_run, find_start, open_dataset

    root = synthetic_root()
    tc = TrainConfig(dataset="synthetic", checkpoint_dir=str(root), model_type="lstm", preset="cpu", device="cpu",
                     max_steps=4, eval_every=2, eval_windows=4, batch_size=4, resume="never", progress=False).validate()
    paths, dataset = open_dataset(tc)
    start = find_start(tc, None, {"context_length": 16}, paths, dataset, torch.device("cpu"), log=lambda m: None)
    claimed = claim_run(paths, start, lambda m: None)
    state = start.state
    training = build_training(state.model_config, state.train_config, torch.device("cpu"), state.total_steps)
    recorder = Recorder(paths, state, claimed, training.raw_model, lambda m: None)
    tokens = torch.randint(4, 50, (4, 17))
    train_step(training, tokens[:, :-1], tokens[:, 1:], 1.0)  # AdamW's moments exist from here
    state.step = 1
    future = recorder.save(state, training, [capture_rng_state(torch.Generator().manual_seed(0))]).future
    assert future.result(timeout=60).state_saved
    recorder.close(timeout=60)

    main = threading.current_thread().name
    for pool in (recorder.pool, recorder.weights_pool):  # the state, and the weights for the .pth
        assert pool.fill_error is None and pool.filled is not None, "the save did not use the prepared buffers"
        assert pool.filled.thread == SnapshotPool.FILL_THREAD != main
    # the state's buffers: the weights, and AdamW's two moments and step count per parameter, all made ahead
    parameters = len(list(training.raw_model.parameters()))
    assert len(recorder.pool.filled.buffers) == len(training.raw_model.state_dict()) + 3 * parameters
    saved = checkpoints.load_state(checkpoints.list_checkpoints(paths.run_checkpoints(state.run_id))[-1])
    assert torch.equal(saved["model"]["rnn.weight_hh_l0"], training.raw_model.rnn.weight_hh_l0.detach())
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"],
                       training.optimizer.state_dict()["state"][0]["exp_avg"])


def synthetic_root() -> Path:
    import tempfile

    sys.path.insert(0, str(REPO / "bench"))
    from train_bench import synthetic_sequences, write_synthetic_store

    from midikit.storage import DatasetPaths

    root = Path(tempfile.mkdtemp(prefix="pool_"))
    write_synthetic_store(DatasetPaths(root, "synthetic"), synthetic_sequences(50, 20_000), 50)
    return root


def test_a_prepared_pool_lends_its_buffers_to_the_first_snapshot_only():
    from midikit.snapshots import SnapshotPool, buffer_spec

    state = {"w": torch.randn(64, 32), "b": torch.randn(32), "nested": [torch.randn(8)]}
    pool = SnapshotPool(size=2)
    filled = pool.prepare(buffer_spec([state["w"], state["b"], state["nested"][0]]),
                          torch.device("cpu")).result(timeout=30)
    snapshot, event = pool.take(state)
    assert event is None
    made = {b.data_ptr() for b in filled.buffers}
    assert {snapshot["w"].data_ptr(), snapshot["b"].data_ptr(), snapshot["nested"][0].data_ptr()} == made
    assert torch.equal(snapshot["w"], state["w"]) and torch.equal(snapshot["nested"][0], state["nested"][0])
    pool.hold(snapshot, Future())
    second, _ = pool.take(state)  # the first is still held by its write: a second copy, allocated as it goes
    assert second["w"].data_ptr() not in made and torch.equal(second["w"], state["w"])


# --------------------------------------------------------------------------- the RNN core's precision


@pytest.mark.parametrize("model_type, core", [("lstm", "bf16"), ("gru", "fp32")])
def test_the_start_line_states_the_precision_the_recurrent_core_runs_in(model_type, core):
    """CPU autocast runs an LSTM in bf16 and leaves a GRU in fp32: the line says what happened, not
    what was asked for (on CUDA the same probe sees cuDNN's fp16, or rnn_cores.LSTMCore's bf16)."""
    from midikit.presets import get_preset
    from midikit.train import TrainConfig
    from midikit.train.setup import build_training, describe_precision

    mc = get_preset(model_type, "cpu").model_config(model_type, 50)
    tc = TrainConfig(model_type=model_type, precision="bf16", device="cpu", lr=1e-3, batch_size=2,
                     warmup_steps=1).validate()
    training = build_training(mc, tc, torch.device("cpu"), 10)
    assert describe_precision(training) == f"bf16, recurrent core {core}"
    with training.autocast:
        out, _ = training.raw_model.rnn(training.raw_model.embedding(torch.zeros(2, 3, dtype=torch.long)))
    assert {torch.bfloat16: "bf16", torch.float32: "fp32"}[out.dtype] == core


@pytest.mark.parametrize("model_type", ["lstm", "gru"])
def test_the_cores_own_call_is_the_modules_in_fp32_and_runs_in_the_dtype_it_is_given(model_type):
    """The path CUDA bf16 takes (weights cast into one buffer, torch.lstm/torch.gru), run here on the
    CPU: in fp32 it is nn.LSTM/nn.GRU exactly, gradients included; in bf16 it computes in bf16."""
    from midikit.rnn_cores import GRUCore, LSTMCore

    torch.manual_seed(0)
    core = (LSTMCore if model_type == "lstm" else GRUCore)(8, 16, 2, batch_first=True)
    x = torch.randn(3, 5, 8, requires_grad=True)
    reference, _ = core(x)  # not CUDA bf16 autocast: the module's own forward
    reference.square().sum().backward()
    expected = [p.grad.clone() for p in core.parameters()]
    core.zero_grad()
    out, _ = core.run_in(torch.float32, x)
    out.square().sum().backward()
    assert torch.equal(out, reference)
    assert all(torch.equal(p.grad, g) for p, g in zip(core.parameters(), expected))
    low, _ = core.run_in(torch.bfloat16, x)
    assert low.dtype == torch.bfloat16 and (low.float() - reference).abs().max() < 0.05

"""Drive faults beneath torch.save during real training runs, and SIGKILLs at random instants.

Each trial trains a small GRU on real data (Nottingham from ../shared, else music21's corpus) in a
forked process, with faults injected by one of two layers (`--fs`): `python`, testsupport.pyfaults
switched on under its checkpoint folder (Python's file functions), or `fuse`, a real FUSE mount
(testsupport.fusefs, a process of its own, as Colab's Drive is) taken for /content/drive, whose faults
fire from inside the filesystem: the mount down when a save starts (mid-run, and at the end), its
process killed (at the end, and mid-write), EIO, full, hung, a vanished folder, and uploads that never
happen before the runtime dies (Drive's background upload). Per fault:
how often it was injected, checkpoints lost (a save the run reported as landed that cannot be
loaded afterwards, or a finished run without its final state), the longest a save held the training
loop, whether the run finished, and whether it ends bit-identical to a run without faults (a run
that did not finish, or was killed, is resumed without faults first).

    python bench/faults.py                         # about 10 minutes on 2 CPU cores
    python bench/faults.py --repeats 1 --kills 10  # a quick look
    python bench/faults.py --fs both               # both layers (the FUSE one needs fuse3 and /dev/fuse)

Writes bench/results/faults.md (the table, the command, the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from midikit import checkpoints, storage
from midikit.data import PreprocessConfig, preprocess
from midikit.train import TrainConfig, train
from testsupport.pyfaults import FaultyFS, TimedActions, apply_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testsupport/, beside midikit/
from testsupport.fusedrive import FuseDrive, fuse_unavailable  # noqa: E402

NOTTINGHAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "nottingham"
MODEL = dict(embed_size=16, hidden_size=32, num_layers=1, dropout=0.1, context_length=32)
STEPS = 300
LAYERS = {"python": "Python (testsupport.pyfaults)", "fuse": "FUSE (testsupport.fusefs)"}
SAVE_DONE = ".models.csv.lock"  # its removal is a save's last Drive call
ONE_SAVE_BEFORE_THE_END = {"eval_every": 1000, "checkpoint_every_steps": STEPS - 50}  # saves at 250 and the final one


def scenarios(rng: random.Random, checkpoint_bytes: int) -> dict:
    """name -> a fault spec for testsupport.pyfaults (fresh random parameters each call)."""
    at = round(rng.uniform(0.3, 1.5), 2)
    return {
        "mount drop mid-save (ENOTCONN)": [{"fail_writes": {"error": "ENOTCONN",
                                                            "after_bytes": rng.randint(1_000, 60_000),
                                                            "times": rng.randint(1, 2), "match": "*step_*.pt*"}}],
        "I/O error mid-save (EIO)": [{"fail_writes": {"error": "EIO", "after_bytes": rng.randint(1_000, 60_000),
                                                      "times": rng.randint(1, 2), "match": "*step_*.pt*"}}],
        "fsync fails (EIO)": [{"fail_fsync": {"error": "EIO", "times": rng.randint(1, 2), "match": "*step_*.pt*"}}],
        "rename fails (EIO)": [{"fail_rename": {"error": "EIO", "times": rng.randint(1, 2), "match": "*step_*.pt*"}}],
        "disk full (room for ~5 checkpoints)": [{"quota_checkpoints": 5.5}],
        "folder vanishes, back after 2 s": [{"at_seconds": at, "unmount": {"vanish": True}},
                                            {"at_seconds": at + 2, "remount": {}}],
        "writes hang 4 s": [{"at_seconds": at, "block_writes": {"match": "*step_*.pt*"}},
                            {"at_seconds": at + 4, "release": {}}],
        "writes hang for good": [{"at_seconds": at, "block_writes": {"match": "*step_*.pt*"}}],
        "slow writes (1 MB/s)": [{"slow_writes": {"bytes_per_s": 1_000_000}}],
    }


def fuse_scenarios(rng: random.Random) -> dict:
    """name -> (TrainConfig changes, [(FuseDrive method, kwargs)], what happens after the run)."""
    saves = rng.randint(2, 8)
    return {
        "mount down when a save starts, 6 s": ({}, [("trigger", dict(op="unlink", action="down", match=SAVE_DONE,
                                                                    count=saves, for_s=6))], None),
        "mount down when the final save starts, 12 s": (ONE_SAVE_BEFORE_THE_END, [("trigger", dict(
            op="unlink", action="down", match=SAVE_DONE, count=1, for_s=12))], None),
        "FUSE process killed when the final save starts, back after 12 s": (ONE_SAVE_BEFORE_THE_END, [("trigger", dict(
            op="unlink", action="kill", match=SAVE_DONE, count=1, for_s=12))], None),
        "FUSE process killed mid-write, back after 3 s": ({}, [("trigger", dict(
            op="write", action="kill", match="*step_*.pt*", count=rng.randint(1, 30), at="before", for_s=3))], None),
        "I/O error mid-save (EIO)": ({}, [("fail", dict(ops="write", error="EIO", match="*step_*.pt*",
                                                        after_bytes=rng.randint(1_000, 300_000),
                                                        times=rng.randint(1, 2)))], None),
        "disk full (room for ~4.5 checkpoints)": ({}, [("quota_checkpoints", 4.5)], None),
        "writes hang 4 s": ({}, [("trigger", dict(op="unlink", action="hang", match=SAVE_DONE, count=saves, for_s=4,
                                                  path="*step_*.pt*"))], None),
        "folder vanishes, back after 2 s": ({}, [("trigger", dict(op="unlink", action="vanish", match=SAVE_DONE,
                                                                  count=saves, for_s=2, path="MyDrive"))], None),
        "uploads stop after a save; the runtime dies at the end": ({}, [("trigger", dict(
            op="unlink", action="defer_uploads", match=SAVE_DONE, count=rng.randint(5, 25)))], "lose_uploads"),
    }


def fuse_trial(data, work: Path, name: str, spec: tuple, checkpoint_bytes: int) -> dict:
    """One run on a FUSE mount taken for /content/drive; what reached Drive is the mount's backing folder."""
    changes, faults, after = spec
    with FuseDrive(work / name) as drive:
        on_drive = storage.DatasetPaths(drive.mount_point / "MyDrive" / "root", data.dataset)
        backing = storage.DatasetPaths(drive.backing / "MyDrive" / "root", data.dataset)
        shutil.copytree(data.data, backing.data)
        for method, kwargs in faults:
            if method == "quota_checkpoints":
                drive.quota(drive.call("usage")["usage"] + int(kwargs * checkpoint_bytes) + 350_000, trash=True)
            else:
                getattr(drive, method)(**kwargs)
        report = work / f"{name}.json"
        pid = os.fork()
        if pid == 0:
            try:
                storage.DRIVE_MOUNT_POINT = drive.mount_point  # midikit's Drive checks and messages, as in Colab
                log = open(report.with_suffix(".log"), "a", buffering=1)
                # room for a 12 s outage at the end
                config = run_config(on_drive, **{"final_wait_minutes": 1, **changes})
                result = train(config, log=lambda message: print(message, file=log), model_overrides=MODEL)
                report.write_text(json.dumps({"status": result.status, "steps": result.steps,
                                              "stall": result.longest_save_stall_s}))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if after == "lose_uploads":
            drive.lose_pending()  # the runtime dies: what Drive had not uploaded never reaches it
        # a full disk refuses every write call that does not fit: count files, as for slow writes
        events = drive.events()
        injected = len([e for e in events if e["kind"] in ("fail", "trigger")]) + len({e["path"] for e in events
                                                                                       if e["kind"] == "enospc"})
        done = json.loads(report.read_text()) if report.exists() else {"status": "killed", "steps": None, "stall": None}
        outcome = {**done, **examine(backing, report), "injected": injected}
    return outcome


def make_dataset(root: Path) -> storage.DatasetPaths:
    source = dict(input_dir=str(NOTTINGHAM)) if any(NOTTINGHAM.glob("*.mid")) else dict(source="corpus")
    config = PreprocessConfig(**source, dataset="faults", checkpoint_dir=str(root), limit=60, transpositions=(0, 2))
    return preprocess(config, progress=False, log=lambda message: None).paths


def run_config(paths: storage.DatasetPaths, **changes) -> TrainConfig:
    values = dict(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type="gru", preset="cpu", batch_size=8,
                  lr=3e-3, max_steps=STEPS, eval_every=20, eval_windows=16, device="cpu", progress=False,
                  checkpoint_every_minutes=0, checkpoint_every_steps=10, patience=0, final_wait_minutes=0.05, seed=3)
    return TrainConfig(**{**values, **changes})


def fresh_root(data: storage.DatasetPaths, work: Path, name: str) -> storage.DatasetPaths:
    paths = storage.DatasetPaths(work / name, data.dataset)
    shutil.copytree(data.data, paths.data)
    return paths


def child(paths: storage.DatasetPaths, spec: list, checkpoint_bytes: int, report: Path) -> None:
    """In the forked process: train under the faults, then write what happened to `report`."""
    log = open(report.with_suffix(".log"), "a", buffering=1)
    with FaultyFS(paths.root, events_log=str(report.with_suffix(".events"))) as fs:
        quota = [item for item in spec if "quota_checkpoints" in item]
        if quota:
            fs.set_quota(fs.usage + int(quota[0]["quota_checkpoints"] * checkpoint_bytes), trash=True)
        actions = apply_spec(fs, [item for item in spec if "quota_checkpoints" not in item])
        with TimedActions(fs, actions):
            result = train(run_config(paths), log=lambda message: print(message, file=log),
                           model_overrides=MODEL)
    report.write_text(json.dumps({"status": result.status, "steps": result.steps,
                                  "stall": result.longest_save_stall_s}))


def trial(data, work: Path, name: str, spec: list, checkpoint_bytes: int, kill_after: float | None) -> dict:
    paths = fresh_root(data, work, name)
    report = work / f"{name}.json"
    pid = os.fork()
    if pid == 0:
        try:
            child(paths, spec, checkpoint_bytes, report)
        finally:
            os._exit(0)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = json.loads(report.read_text()) if report.exists() else {"status": "killed", "steps": None, "stall": None}
    return {**done, **examine(paths, report)}


def examine(paths: storage.DatasetPaths, report: Path) -> dict:
    """Faults injected, checkpoints reported as saved, and what is on disk now."""
    events = report.with_suffix(".events")
    kinds = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    slowed = {event["path"] for event in kinds if event["kind"] == "slow"}  # one event per chunk: count files
    injected = sum(event["kind"] in ("fail", "enospc", "block", "unmount") for event in kinds) + len(slowed)
    saved = [int(line.rsplit("step ", 1)[1].split()[0].rstrip("."))
             for line in report.with_suffix(".log").read_text().splitlines()
             if line.startswith("Checkpoint saved:")] if report.with_suffix(".log").exists() else []
    run_dirs = [p for p in paths.checkpoints.iterdir()
                if storage.RUN_ID_PATTERN.match(p.name)] if paths.checkpoints.is_dir() else []
    files = [f for run_dir in run_dirs for f in checkpoints.inspect_run(run_dir)]
    newest = max((f["step"] for f in files if f["status"] == "valid" and f["step"] is not None), default=0)
    lost = int(bool(saved) and max(saved) > newest) + sum(f["status"] == "corrupt" for f in files)
    return {"paths": paths, "injected": injected, "lost": lost, "newest": newest}


def finish_and_compare(outcome: dict, reference: dict) -> bool:
    """Resume without faults if the run is not complete on disk (whatever the run itself reported: Drive
    may never have received its end), then compare its final state with the fault-free run's. A run
    killed after its final state landed is complete: the command run again would start a new run, not
    resume a finished one."""
    paths = outcome["paths"]
    before = _run_dirs(paths)
    latest = checkpoints.load_latest(before[0], log=lambda message: None) if len(before) == 1 else None
    complete = latest is not None and latest[1].get("finished")
    if not complete:  # the same command again: a run killed before it was claimed starts anew, with these sizes
        train(run_config(paths), log=lambda message: None, model_overrides=MODEL)
    run_dirs = _run_dirs(paths)
    if len(run_dirs) != 1:  # a resume must continue the one run, never start a second
        print(f"  {len(run_dirs)} runs after resuming: {[p.name for p in run_dirs]}", flush=True)
        return False
    _, state = checkpoints.load_latest(run_dirs[0], log=lambda message: None)
    return state["step"] == reference["step"] and all(torch.equal(state["model"][k], v)
                                                      for k, v in reference["model"].items()) and all(
        torch.equal(state["optimizer"]["state"][i][k], v) for i, moments in reference["optimizer"]["state"].items()
        for k, v in moments.items())


def _run_dirs(paths: storage.DatasetPaths) -> list:
    return [p for p in paths.checkpoints.iterdir()
            if storage.RUN_ID_PATTERN.match(p.name)] if paths.checkpoints.is_dir() else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="trials per fault")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs at random instants, each with a random fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/faults.md")
    parser.add_argument("--fs", choices=("python", "fuse", "both"), default="python",
                        help="the layer that injects the faults: Python's file functions, a real FUSE mount, or both")
    args = parser.parse_args(argv)
    layers = ["python", "fuse"] if args.fs == "both" else [args.fs]
    if "fuse" in layers and fuse_unavailable():
        parser.error(f"--fs {args.fs}: {fuse_unavailable()}")
    torch.set_num_threads(1)  # the same arithmetic in every process: bit-identity is then a fair test
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="midikit_faults_"))
    data = make_dataset(work / "data")

    started = time.perf_counter()
    reference_paths = fresh_root(data, work, "reference")
    train(run_config(reference_paths), log=lambda message: None, model_overrides=MODEL)
    clean_seconds = time.perf_counter() - started
    (ref_dir,) = reference_paths.checkpoints.iterdir()
    _, reference = checkpoints.load_latest(ref_dir)
    checkpoint_bytes = checkpoints.list_checkpoints(ref_dir)[0].stat().st_size
    print(f"reference run: {clean_seconds:.1f} s, checkpoint {checkpoint_bytes / 1024:.0f} KiB", flush=True)

    rows, kill_rows = {}, {}
    for repeat in range(args.repeats):
        if "python" in layers:
            for name, spec in scenarios(rng, checkpoint_bytes).items():
                outcome = trial(data, work, f"{len(rows)}_{repeat}_{abs(hash(name)) % 10**6}", spec, checkpoint_bytes,
                                None)
                _add(rows, ("python", name), outcome, finish_and_compare(outcome, reference))
        if "fuse" in layers:
            for index, (name, spec) in enumerate(fuse_scenarios(rng).items()):
                outcome = fuse_trial(data, work, f"fuse_{repeat}_{index}", spec, checkpoint_bytes)
                _add(rows, ("fuse", name), outcome, finish_and_compare(outcome, reference))
    for index in range(args.kills if "python" in layers else 0):
        name, spec = rng.choice(list(scenarios(rng, checkpoint_bytes).items()))
        outcome = trial(data, work, f"kill_{index}", spec, checkpoint_bytes, rng.uniform(0.2, clean_seconds * 1.2))
        _add(kill_rows, ("python", "SIGKILL + " + name), outcome, finish_and_compare(outcome, reference))
    text = _report(rows, kill_rows, args, clean_seconds)
    print(text)
    Path(args.out).write_text(text)
    if all(row["exact"] == row["trials"] for row in list(rows.values()) + list(kill_rows.values())):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"Some runs did not end bit-identical: their folders, logs and fault events are kept in {work}")
    return 0


def _add(rows: dict, key: tuple, outcome: dict, exact: bool) -> None:
    row = rows.setdefault(key, {"trials": 0, "injected": 0, "lost": 0, "stall": 0.0, "finished": 0, "exact": 0})
    row["trials"] += 1
    row["injected"] += outcome["injected"]
    row["lost"] += outcome["lost"]
    row["stall"] = max(row["stall"], outcome["stall"] or 0.0)
    row["finished"] += outcome["status"] in ("max_steps", "finished")
    row["exact"] += exact
    print(f"{key[0]}: {key[1]}: {outcome['status']}, injected {outcome['injected']}, lost "
          f"{outcome['lost']}, exact {exact}", flush=True)


def _report(rows: dict, kill_rows: dict, args, clean_seconds: float) -> str:
    lines = [
        "# Drive faults and SIGKILLs during training", "",
        f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (1 thread), Python "
        f"{platform.python_version()}",
        f"- run: GRU {MODEL}, {STEPS} steps, a checkpoint every 10 steps, final wait 3 s (FUSE: 60 s); a fault-free "
        f"run takes {clean_seconds:.1f} s",
        "- layer: what injected the fault. Python: testsupport.pyfaults, beneath Python's file "
        "functions in the training",
        "  process. FUSE: testsupport.fusefs, a real FUSE filesystem in a process of its own taken "
        "for /content/drive, its",
        "  faults fired from inside it at an exact call (\"when the final save starts\": the run saves "
        "at step 250 and at its",
        "  end, and the outage begins as the step-250 save ends); its process killed means the kernel answers ENOTCONN",
        "  until it is mounted again",
        "- lost: saves reported as landed that cannot be loaded afterwards (or corrupt files); stall: "
        "the longest one save",
        "  held the training loop; exact: final weights and AdamW moments equal the fault-free "
        "run's (a run that did not",
        "  finish, or was killed, is first resumed without faults)",
        "- uploads that never happen: Drive acknowledges every write after a random save and uploads "
        "none of them; the run",
        "  ends, then the runtime dies. Those saves are lost on Drive by design (counted under lost); "
        "the resume continues",
        "  from the newest checkpoint that reached it", "",
        "| layer | fault | trials | times injected | checkpoints lost | longest stall (s) | run finished | "
        "resumed run bit-identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (layer, name), row in list(rows.items()) + list(kill_rows.items()):
        finished = "n/a (killed)" if name.startswith("SIGKILL") else f"{row['finished']}/{row['trials']}"
        stall = "n/a" if name.startswith("SIGKILL") else f"{row['stall']:.2f}"
        lines.append(f"| {LAYERS[layer]} | {name} | {row['trials']} | {row['injected']} | {row['lost']} | {stall} | "
                     f"{finished} | {row['exact']}/{row['trials']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

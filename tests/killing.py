"""Kill -9 anywhere, lose nothing: run a difflens stage as a subprocess, SIGKILL it at seeded random moments,
rerun it to completion and compare the result with an uninterrupted run.

Shared by the fast cases of tests/test_kill_resume.py and the full sweep of bench/kill_resume.py (which loads this
file by path: it needs nothing from the test suite but the standard library, safetensors and the CLI, so both use
one harness and one stage table instead of two copies).

A *stage* is one CLI command over a *work folder*: the command's inputs are copied into the folder first (the output
of the stages before it, from their reference run), so the reference and the killed runs start from identical
folders and every path the command writes is inside it. After the killed attempts and one rerun to completion:

- a deterministic stage's folder must hold the very same files, byte for byte, as the reference's — except the
  files its `volatile` patterns name (timings, logs), each with the reason it may differ;
- every stage's folder must be complete: each JSON parses, each safetensors loads, no temporary of a killed writer
  (``*.tmp-*``), no lock (``.*.lock``) or lock moved aside (``*.stale-*``) is left behind.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMG = "double.0.img.out"
LEFTOVERS = ("*.tmp-*", ".*.lock", "*.lock", "*.stale-*")  # what no finished output may hold


@dataclass
class Stage:
    """One CLI command to kill and resume.

    name: what the reports call it; args: the difflens arguments, ``{work}`` standing for the work folder;
    inputs: stages whose reference folders are copied into the work folder before the run; deterministic: whether
    a rerun must give identical files; volatile: glob patterns (relative paths) of files that may differ anyway,
    with why (``<glob>#<dotted.key>``: only that key of a JSON file); env: extra environment (e.g. a throttle that spreads a fast stage over time, so kills land inside it).
    """

    name: str
    args: list[str]
    inputs: tuple[str, ...] = ()
    deterministic: bool = True
    volatile: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    chat_stub: bool = False  # serve tests/chat_stub.py's endpoint at ``{url}`` while the stage runs

    def argv(self, work: Path, url: str = "") -> list[str]:
        return [a.replace("{work}", str(work)).replace("{url}", url) for a in self.args]


def difflens_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage subprocess: this checkout's difflens, one thread (a shared 2-core machine)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.update(extra or {})
    return env


def difflens_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "difflens.cli", *argv]


def prepare(stage: Stage, work: Path, refs: dict[str, Path]) -> Path:
    """An empty work folder holding copies of the reference folders of ``stage.inputs``."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in stage.inputs:
        shutil.copytree(refs[name], work, dirs_exist_ok=True, symlinks=True)
    return work


def newest_change(root: Path) -> float:
    """Latest modification time of anything under ``root`` (0 when empty)."""
    latest = 0.0
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                latest = max(latest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                pass
    return latest


def _sibling(name: str):
    """A helper module beside this file, loaded by path (the bench script has no tests/ on its import path)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def vlm_reply(_i: int, body: dict) -> tuple:
    """The stub VLM: explains every latent as red objects, judges every image 0.9 (a scripted, valid answer)."""
    system = body["messages"][0]["content"]
    system = system if isinstance(system, str) else json.dumps(system)
    if "study one internal feature" in system:
        return ("ok", json.dumps({"per_image": ["red"], "explanation": "red objects"}))
    return ("ok", json.dumps({"reason": "looks right", "score": 0.9}))


@contextmanager
def chat_endpoint(stage: Stage):
    """The stub endpoint's URL while the block runs (an empty string for stages that do not use one)."""
    if not stage.chat_stub:
        yield ""
        return
    server = _sibling("chat_stub").ChatServer(vlm_reply)
    try:
        yield server.url
    finally:
        server.close()


def run_to_completion(stage: Stage, work: Path, url: str = "", timeout: float = 600) -> dict:
    """Run the stage uninterrupted; returns its wall time and when (seconds after start) it first wrote into ``work``
    (kills are drawn between the two, where they can hurt)."""
    before = newest_change(work)
    start = time.time()
    proc = subprocess.Popen(difflens_cmd(stage.argv(work, url)), env=difflens_env(stage.env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first_write = None
    while proc.poll() is None:
        if first_write is None and newest_change(work) > before:
            first_write = time.time() - start
        if time.time() - start > timeout:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{stage.name}: `difflens {' '.join(stage.argv(work))}` failed ({proc.returncode}):\n"
                           f"{err[-3000:]}")
    return {"wall_s": wall, "first_write_s": wall if first_write is None else first_write, "stderr": err}


def run_in_process(stage: Stage, work: Path, url: str = "") -> dict:
    """:func:`run_to_completion` without a subprocess (the test suite's references and reruns: no interpreter
    start-up); its writing window is its whole wall time."""
    from difflens.cli import main as cli_main

    start = time.time()
    old = {k: os.environ.get(k) for k in stage.env}
    os.environ.update(stage.env)
    try:
        rc = cli_main(stage.argv(work, url))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    if rc != 0:
        raise RuntimeError(f"{stage.name}: `difflens {' '.join(stage.argv(work, url))}` failed ({rc})")
    return {"wall_s": time.time() - start, "first_write_s": 0.0, "stderr": ""}


def kill_after(stage: Stage, work: Path, delay: float, url: str = "", timeout: float = 600) -> bool:
    """Start the stage and SIGKILL it ``delay`` seconds after it first writes into ``work`` (its lock, a chunk: the
    moment its work starts, whatever the interpreter's start-up took); True when it still ran (a real kill)."""
    before = newest_change(work)
    proc = subprocess.Popen(difflens_cmd(stage.argv(work, url)), env=difflens_env(stage.env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and newest_change(work) <= before and time.time() < deadline:
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _is_volatile(rel: str, stage: Stage) -> bool:
    return any("#" not in pattern and fnmatch.fnmatch(rel, pattern) for pattern in stage.volatile)


def _volatile_keys(rel: str, stage: Stage) -> list[list[str]]:
    """The JSON keys (as key paths) of ``rel`` that may differ: the volatile patterns ``<glob>#<dotted.key>``."""
    return [key.split(".") for glob, _, key in (p.partition("#") for p in stage.volatile if "#" in p)
            if fnmatch.fnmatch(rel, glob)]


def _drop(obj, key: list[str]):
    node = obj
    for part in key[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node.pop(key[-1], None)
    return obj


def _content(path: Path, rel: str, stage: Stage) -> bytes:
    """The bytes compared: the file's; for a JSON file with volatile keys its JSON without them; for a safetensors
    file its tensor bytes and its metadata without them (the first part of a key names a metadata entry holding
    JSON, as an index's header)."""
    keys = _volatile_keys(rel, stage)
    if not keys:
        return path.read_bytes()
    if path.suffix == ".safetensors":
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        meta = header.pop("__metadata__", {})
        for key in keys:
            if key[0] in meta:
                meta[key[0]] = json.dumps(_drop(json.loads(meta[key[0]]), key[1:]), sort_keys=True)
        return json.dumps([header, meta], sort_keys=True).encode() + data[8 + n:]
    obj = json.loads(path.read_text())
    for key in keys:
        _drop(obj, key)
    return json.dumps(obj, sort_keys=True).encode()


def file_hashes(root: Path, stage: Stage) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex), the stage's volatile files left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not _is_volatile(rel, stage):
            out[rel] = hashlib.sha256(_content(path, rel, stage)).hexdigest()
    return out


def incomplete_files(root: Path) -> list[str]:
    """What makes ``root`` unfinished: leftover temporaries and locks, JSON (or a JSON-lines line) that does not
    parse, safetensors that do not load (each as 'path: why')."""
    from safetensors import safe_open

    problems = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in LEFTOVERS):
            problems.append(f"{rel}: left behind")
        elif path.is_file() and path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError as err:
                problems.append(f"{rel}: JSON does not parse ({err})")
        elif path.is_file() and path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError as err:
                    problems.append(f"{rel}: line {n} does not parse ({err})")
                    break
        elif path.is_file() and path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
            except Exception as err:  # noqa: BLE001 - any unreadable file is a finding
                problems.append(f"{rel}: safetensors does not load ({err})")
    return problems


def compare(stage: Stage, ref: Path, got: Path) -> list[str]:
    """Differences of a resumed run from the reference: incomplete files, and for a deterministic stage every file
    missing, extra or with other bytes."""
    problems = incomplete_files(got)
    if stage.deterministic:
        want, have = file_hashes(ref, stage), file_hashes(got, stage)
        problems += [f"{rel}: missing after the rerun" for rel in sorted(set(want) - set(have))]
        problems += [f"{rel}: not in the uninterrupted run" for rel in sorted(set(have) - set(want))]
        problems += [f"{rel}: differs from the uninterrupted run" for rel in sorted(set(want) & set(have))
                     if want[rel] != have[rel]]
    else:
        want, have = set(_all_files(ref, stage)), set(_all_files(got, stage))
        problems += [f"{rel}: missing after the rerun" for rel in sorted(want - have)]
    return problems


def _all_files(root: Path, stage: Stage) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and not _is_volatile(p.relative_to(root).as_posix(), stage)]


def _park(run: Path, name: str) -> Path:
    """Move a finished run folder aside to ``name`` beside it: the reference and the killed runs both run in the same
    ``run`` folder, so any absolute path they record (a hint beside the relative one) is the same."""
    target = run.with_name(name)
    shutil.rmtree(target, ignore_errors=True)
    run.rename(target)
    return target


def ensure_inputs(stage: Stage, workdir: Path, refs: dict[str, Path], in_process: bool = False) -> None:
    """Make the reference folders of the stages ``stage`` takes as input (theirs first) that ``refs`` lacks."""
    run = run_in_process if in_process else run_to_completion
    for name in stage.inputs:
        if name not in refs:
            source = globals()["stage"](name)
            ensure_inputs(source, workdir, refs, in_process)
            with chat_endpoint(source) as url:
                run(source, prepare(source, workdir / name / "run", refs), url)
            refs[name] = _park(workdir / name / "run", "ref")


def kill_and_resume(stage: Stage, workdir: Path, refs: dict[str, Path], kills: int = 3, seed: int = 0,
                    in_process: bool = False) -> dict:
    """The whole check of one stage: an uninterrupted reference run, then ``kills`` attempts on one work folder, each SIGKILLed at a seeded random
    moment of the reference's writing window (counted from the attempt's first write), then one rerun to completion,
    compared. ``in_process``: the reference and the rerun run in this process (only the killed attempts start one).

    The reference folders of its inputs are made first where ``refs`` lacks them. Returns {"stage", "kills" (attempts), "killed" (still running when the signal came), "matched", "problems",
    "reference_s", "rerun_s"}; the reference folder is recorded in ``refs`` for the stages that take it as input.
    """
    ensure_inputs(stage, workdir, refs, in_process)
    run = run_in_process if in_process else run_to_completion
    with chat_endpoint(stage) as url:
        reference = run(stage, prepare(stage, workdir / stage.name / "run", refs), url)
        ref = _park(workdir / stage.name / "run", "ref")
        refs[stage.name] = ref
        got = prepare(stage, workdir / stage.name / "run", refs)
        rng = random.Random(f"{seed}:{stage.name}")
        window = reference["wall_s"] - reference["first_write_s"]  # how long the stage wrote in the reference run
        killed = 0
        for _ in range(kills):
            killed += kill_after(stage, got, rng.uniform(0, window), url)
        rerun = run(stage, got, url)
    got = _park(got, "killed")
    problems = compare(stage, ref, got)
    return {"stage": stage.name, "kills": kills, "killed": killed, "matched": not problems, "problems": problems,
            "reference_s": round(reference["wall_s"], 2), "rerun_s": round(rerun["wall_s"], 2)}


# ---- the stages, tiny settings; each later stage runs over the reference folders of those it names as inputs ---
STORE = "{work}/store"
SAE = f"{{work}}/sae/{IMG}"
ITDA = f"{{work}}/itda/{IMG}"
TRAIN_VOLATILE = {"*/train_log.jsonl": "wall-clock timings per logged step (and a resumed run logs from its checkpoint)",
                  "*/cfg.json#difflens_meta.seconds": "the training's wall time"}
STAGES: list[Stage] = [
    Stage("capture", ["capture", "--model", "embedded-tiny", "--sites", IMG, "--steps-to-record", "0,1",
                      "--num-steps", "2", "--prompts", "world", "--n-images", "24", "--batch-size", "2",
                      "--holdout", "0.25", "--out", STORE, "--quiet"]),
    Stage("train-sae", ["train", "--store", STORE, "--site", IMG, "--step", "1", "--out", "{work}/sae",
                        "--num-latents", "48", "--k", "4", "--k-aux", "8", "--dead-window-tokens", "512",
                        "--normalization", "none", "--batch-size", "64", "--num-tokens", str(64 * 40),
                        "--checkpoint-every", "4", "--lr", "3e-3", "--warmup-steps", "5", "--quiet"],
          inputs=("capture",), volatile=TRAIN_VOLATILE, env={"DIFFLENS_TRAIN_THROTTLE_S": "0.05"}),
    Stage("train-itda", ["train", "--method", "itda", "--store", STORE, "--site", IMG, "--step", "1",
                         "--out", "{work}/itda", "--k", "4", "--normalization", "none", "--batch-size", "64",
                         "--num-tokens", str(64 * 24), "--checkpoint-every", "4", "--quiet"],
          inputs=("capture",), volatile=TRAIN_VOLATILE, env={"DIFFLENS_TRAIN_THROTTLE_S": "0.05"}),
    Stage("features-index", ["features", "index", "--run", SAE, "--steps", "all", "--top-n", "6", "--samples", "12",
                             "--quantile-bins", "3", "--batch-images", "2", "--checkpoint-every", "1", "--quiet"],
          inputs=("capture", "train-sae"),
          volatile={"*/index/index.json#seconds": "the indexing's wall time",
                    "*/index/index.safetensors#difflens_index.seconds": "the same, in the index's header"}),
    Stage("features-truth", ["features", "truth", "--index", f"{SAE}/index", "--bootstrap", "20"],
          inputs=("features-index",)),
    Stage("autointerp-oracle", ["autointerp", "--index", f"{SAE}/index", "--backend", "oracle", "--features", "8",
                                "--explain-images", "3", "--test-positives", "2", "--negatives-random", "2",
                                "--negatives-other", "2"],
          inputs=("features-index",)),
    Stage("autointerp-openai", ["autointerp", "--index", f"{SAE}/index", "--backend", "openai", "--features", "4",
                                "--explain-images", "2", "--test-positives", "2", "--negatives-random", "1",
                                "--negatives-other", "1", "--image-size", "64", "--base-url", "{url}",
                                "--model", "test-vlm", "--api-key-env", "", "--max-concurrency", "1"],
          inputs=("features-index",), deterministic=False, chat_stub=True),
    Stage("bench-edits", ["bench", "edits", "--run", "{work}/sae", "--model", "embedded-tiny", "--n", "1",
                          "--categories", "color,size", "--num-steps", "2", "--ks", "2", "--strengths", "1",
                          "--dense-strengths", "1", "--no-require-faithful", "--n-boot", "10", "--quiet",
                          "-o", "{work}/edits/results.json", "--groups", "color,size"],
          inputs=("train-sae",)),
    Stage("world-train", ["world", "train", "--out", "{work}/world", "--steps", "12", "--batch-size", "2",
                          "--warmup-steps", "1", "--autoencoder-steps", "0", "--latent-channels", "0",
                          "--num-double-blocks", "1", "--num-single-blocks", "1", "--num-heads", "2",
                          "--text-layers", "1", "--checkpoint-every", "2", "--threads", "1"]),
    # the export pages the run's indexed dictionaries with their truth and explanations (an ITDA without an index
    # would add one table row: train-itda is killed as a stage of its own instead)
    Stage("browse-export", ["browse", "{work}/sae", "--export", "{work}/site", "--export-features", "6"],
          inputs=("features-truth", "autointerp-oracle")),
]
FAST = ("train-sae", "features-index")  # inputs: capture, train-sae  # the cases tests/test_kill_resume.py runs (a few seconds each)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)

"""The run-folder layout (difflens.store.run_layout): one rule finds a run's dictionaries for every command, and a
run folder moved elsewhere keeps working (links relative first, then the absolute hint, the store's identity
checked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import difflens as dl
from difflens.browser.run import Run
from difflens.cli import main
from difflens.interpret.index import FeatureIndex
from difflens.steering.editing.run import _dictionaries
from difflens.store import run_layout

IMG = "double.0.img.out"
SMALL = dict(k=4, num_latents=32, batch_size=128, k_aux=8, dead_window_tokens=512, lr=3e-3, warmup_steps=5,
             num_tokens=128 * 10, progress=False, checkpoint_every=0, normalization="none")
INDEX = ["--top-n", "4", "--samples", "8", "--quantile-bins", "2", "--batch-images", "8", "--quiet"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A demo-shaped run: RUN/store (embedded-tiny, 16 images, steps 0-1, a quarter held out) and one SAE in
    RUN/dictionaries/sae."""
    root = tmp_path_factory.mktemp("base") / "run"
    model = dl.load_model("embedded-tiny")
    prompts = [f"a {c} {s} on a white background" for c in ("red", "green", "blue", "yellow")
               for s in ("circle", "square", "triangle", "diamond")]
    dl.capture(model, prompts, sites=[IMG], steps=[0, 1], out=root / "store", num_steps=2, holdout=0.25,
               progress=False)
    dl.train_sae(root / "store", IMG, 1, out=root / "dictionaries" / "sae", **SMALL)
    return root


def shaped(base_run: Path, tmp_path: Path, kind: str) -> tuple[Path, str]:
    """(the folder a command is pointed at, the dictionary's name) for each shape of run a user may have."""
    if kind == "demo run":
        return Path(shutil.copytree(base_run, tmp_path / "demo")), "sae"
    dictionary = base_run / "dictionaries" / "sae"
    if kind == "train --out":  # R/<site>/; the store stays where it was: found through the absolute hint
        shutil.copytree(dictionary, tmp_path / "train" / IMG)
        return tmp_path / "train", IMG
    return Path(shutil.copytree(dictionary, tmp_path / "one" / "sae")), "sae"


def ok(argv: list[str], capsys) -> str:
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, f"difflens {' '.join(argv)} failed: {out.err}{out.out}"
    return out.out


@pytest.mark.parametrize("kind", ["demo run", "train --out", "dictionary folder"])
def test_every_command_accepts_the_same_folders(base_run, tmp_path, kind, capsys):
    folder, name = shaped(base_run, tmp_path, kind)
    assert list(run_layout.find_dictionaries(folder)) == [name]
    ok(["eval", "--run", str(folder), "--tokens", "256"], capsys)
    ok(["analyze", "--store", str(base_run / "store"), "--out", str(tmp_path / "an"), "--what", "layers",
        "--run", str(folder), "--eval-tokens", "256"], capsys)
    ok(["features", "build", "--run", str(folder), *INDEX], capsys)
    index = FeatureIndex.load(run_layout.one_index(folder))
    latent = int(index.alive().nonzero()[0])
    ok(["features", "show", "--index", str(folder), "--feature", str(latent), "--images", "2"], capsys)
    assert run_layout.card_path(index.path, latent).is_file()
    ok(["autointerp", "--index", str(folder), "--features", f"={latent}", "--image-size", "64"], capsys)
    assert set(run_layout.autointerp_backends(index.path)) == {"oracle"}
    ok(["features", "truth", "--run", str(folder), "--controls", "random", "--bootstrap", "0"], capsys)
    assert run_layout.truth_path(run_layout.find_dictionaries(folder)[name]).is_file()
    ok(["steer", "--run", str(folder), "--latent", str(latent), "--unit", "raw", "--num-steps", "2",
        "--output", str(tmp_path / "steer.png")], capsys)
    browsed = Run(folder)
    assert list(browsed.dictionaries) == [name] and browsed.dictionaries[name].has_index
    assert browsed.store is not None and browsed.dictionaries[name].truth is not None
    assert list(_dictionaries(str(folder), None)) == [name]


def test_a_folder_without_dictionaries_names_the_shapes_looked_for(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dictionaries/<name>/cfg.json \(a demo run\).*train --out"):
        run_layout.find_dictionaries(tmp_path / "empty")
    assert main(["eval", "--run", str(tmp_path / "empty")]) == 2
    assert "a demo run" in capsys.readouterr().err


def test_a_command_that_needs_one_dictionary_names_the_choices(base_run, tmp_path):
    run = Path(shutil.copytree(base_run, tmp_path / "run"))
    shutil.copytree(run / "dictionaries" / "sae", run / "dictionaries" / "sae2")
    with pytest.raises(ValueError, match=r"holds 2 dictionaries \(sae, sae2\); pass one of them"):
        run_layout.one_dictionary(run)


def absolute_strings(obj, *roots: Path) -> list[str]:
    """Every string in a JSON value that names a path under one of ``roots``."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in absolute_strings(v, *roots)]
    if isinstance(obj, list):
        return [s for v in obj for s in absolute_strings(v, *roots)]
    return [obj] if isinstance(obj, str) and any(str(r) in obj for r in roots) else []


def test_a_moved_run_works_with_every_command(base_run, tmp_path, capsys):
    run = Path(shutil.copytree(base_run, tmp_path / "here" / "run"))
    ok(["features", "build", "--run", str(run), *INDEX], capsys)
    ok(["features", "truth", "--run", str(run), "--controls", "random", "--bootstrap", "0"], capsys)
    cfg = json.loads((run / "dictionaries" / "sae" / run_layout.CFG_FILE).read_text())
    assert cfg["difflens_meta"]["store"]["relative"] == "../../store"
    header = json.loads((run / "dictionaries" / "sae" / "index" / run_layout.INDEX_HEADER).read_text())
    assert header["store_relative"] == "../../../store" and header["dictionary_relative"] == ".."
    ok(["autointerp", "--index", str(run), "--features", "2", "--image-size", "64"], capsys)
    for written in (run_layout.truth_path(run / "dictionaries" / "sae"),
                    run_layout.autointerp_results(run / "dictionaries" / "sae" / "index", "oracle")):
        assert absolute_strings(json.loads(written.read_text()), tmp_path) == [], written
    assert json.loads(run_layout.truth_path(run / "dictionaries" / "sae").read_text())["store"] == "../../store"

    moved = Path(shutil.move(run, tmp_path / "elsewhere" / "moved"))
    assert not run.exists()
    sae = moved / "dictionaries" / "sae"
    ok(["eval", "--run", str(moved), "--tokens", "256"], capsys)
    ok(["features", "build", "--run", str(moved), "--out", str(tmp_path / "again"), *INDEX], capsys)
    ok(["features", "truth", "--index", str(moved), "--controls", "random", "--bootstrap", "0"], capsys)
    assert run_layout.truth_path(run_layout.index_folder(sae)).is_file()
    index = FeatureIndex.load(run_layout.index_folder(sae))
    assert index.dictionary.path == sae.resolve() and Path(index.store.root).resolve() == (moved / "store").resolve()
    assert Path(dl.load_dictionary(sae).locate_store()).resolve() == (moved / "store").resolve()
    browsed = Run(moved)
    assert Path(browsed.store.root).resolve() == (moved / "store").resolve()
    assert browsed.dictionaries["sae"].index is not None and browsed.dictionaries["sae"].model() is not None
    assert list(_dictionaries(str(moved), ["sae"])) == ["sae"]


def test_the_relative_store_is_tried_first_then_the_hint_and_another_capture_is_refused(base_run, tmp_path):
    copy = Path(shutil.copytree(base_run, tmp_path / "copy"))
    sae = copy / "dictionaries" / "sae"
    assert Path(dl.load_dictionary(sae).locate_store()).resolve() == (copy / "store").resolve()  # relative first
    manifest = copy / "store" / "store.json"
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**meta, "prompts_hash": "another"}))
    # the copy's store is another capture now: the hint (the original store) is used
    assert Path(dl.load_dictionary(sae).locate_store()).resolve() == (base_run / "store").resolve()
    cfg_path = run_layout.cfg_path(sae)
    cfg = json.loads(cfg_path.read_text())
    cfg["difflens_meta"]["store"]["path"] = str(tmp_path / "gone")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"found only other ones .*prompts_hash: recorded .*, found 'another'"):
        dl.evaluate(dl.load_dictionary(sae), max_tokens=64)


def test_old_dictionaries_with_only_an_absolute_store_path_keep_loading(base_run, tmp_path):
    copy = Path(shutil.copytree(base_run, tmp_path / "copy"))
    cfg_path = run_layout.cfg_path(copy / "dictionaries" / "sae")
    cfg = json.loads(cfg_path.read_text())
    for old in ({k: v for k, v in cfg["difflens_meta"]["store"].items() if k != "relative"},
                str(base_run / "store")):  # the identity dict of before, and the bare path of older versions
        cfg["difflens_meta"]["store"] = old
        cfg_path.write_text(json.dumps(cfg))
        d = dl.load_dictionary(cfg_path.parent)
        assert Path(d.locate_store()).resolve() == (base_run / "store").resolve()
    shutil.rmtree(copy / "store")
    cfg["difflens_meta"]["store"] = {"path": str(tmp_path / "nowhere")}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match=r"store of dictionary .* not found: tried .*nowhere \(missing\)"):
        dl.load_dictionary(cfg_path.parent).locate_store()


def test_summary_plots_listed_from_the_runs_former_place_are_found_in_the_moved_run(base_run, tmp_path):
    run = Path(shutil.copytree(base_run, tmp_path / "run"))
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"png")
    (run / "plots" / "b.png").write_bytes(b"png")
    old = tmp_path / "former" / "place" / "plots" / "b.png"
    run_layout.summary_path(run).write_text(json.dumps({"plots": ["plots/a.png", str(old), "/etc/passwd"]}))
    assert Run(run).plots() == ["plots/a.png", "plots/b.png"]

"""prepare: sources, Ray shard writing, bad inputs, reruns, interruption, full disk, CLI errors.

One small Vimeo-shaped fixture (192x128 frames) is generated per module; Ray is the session's
real local instance (``ray_local``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from pipeline.data.feature_encoding import DEFAULT_ENCODING, decode_features
from pipeline.data.prepare import run_prepare
from pipeline.data.sample_data import generate_sample
from pipeline.data.sources import list_source, parse_frames, select_frames
from pipeline.infra.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SIZE = (192, 128)


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parts = generate_sample(
        tmp_path_factory.mktemp("sample"),
        train_sequences=3,
        val_sequences=1,
        frame_size=SIZE,
        coco_images=0,
        kodak_images=0,
    )
    return parts.vimeo_root


@pytest.fixture(scope="module")
def bad_tree(clean_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean tree with each handled bad case once."""
    root = tmp_path_factory.mktemp("bad") / "vimeo"
    shutil.copytree(clean_tree, root)
    seq = root / "sequences" / "00001"
    good = (seq / "0001" / "im2.png").read_bytes()
    (seq / "0001" / "im2.png").write_bytes(good[: len(good) // 2] + b"\x00garbage" * 50)  # corrupt PNG
    (seq / "0001" / "im3.png").write_bytes(b"")  # zero-byte file
    (seq / "0002" / "im5.png").unlink()  # frame missing
    train = (root / "sep_trainlist.txt").read_text().splitlines()
    lines = train[:1] + ["", train[0], "00099/0001"] + train[1:]  # blank, duplicate, missing sequence
    (root / "sep_trainlist.txt").write_text("\n".join(lines) + "\n")
    return root


def _app() -> typer.Typer:
    from pipeline.cli import app

    return app


def _prepare(listing, out: Path, yolo, **kw):
    return run_prepare(listing, out, front=yolo.front, yolo_provenance=dict(yolo.provenance), progress=False, **kw)


def _stored_features(out: Path) -> list[np.ndarray]:
    feats = []
    for tar_path in sorted(out.glob("*/shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({name.split(".", 1)[0] for name in members}):
            sample = {name.split(".", 1)[1]: data for name, data in members.items() if name.split(".", 1)[0] == key}
            feats.append(decode_features(sample))
    return feats


# ---------------------------------------------------------------- sources


def test_frame_selection() -> None:
    assert select_frames("all", 7) == [1, 2, 3, 4, 5, 6, 7]
    assert select_frames("middle", 7) == [4]
    assert select_frames("middle", 3) == [2]
    assert select_frames(3, 7) == [1, 4, 7]
    assert parse_frames("2") == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(UserError):
            parse_frames(bad)
    with pytest.raises(UserError, match="at most 3"):
        select_frames(4, 3)


def test_vimeo_source_lists_and_skips(bad_tree: Path, clean_tree: Path) -> None:
    clean = list_source("vimeo90k", clean_tree, "all")
    assert [r.split for r in clean.items].count("train") == 21 and [r.split for r in clean.items].count("val") == 7
    assert clean.items[0].key == "00001_0001_im1" and clean.layout == "septuplet"
    assert [k for k, _ in clean][:2] == ["00001_0001_im1", "00001_0001_im2"]
    bad = list_source("vimeo90k", bad_tree, "middle")
    reasons = sorted(s["reason"].split(" (")[0] for s in bad.skipped)
    assert reasons == [
        "blank line in list file",
        "duplicate of line 1",
        "sequence named in the list is missing on disk",
    ]
    assert [r.key for r in bad.items] == ["00001_0001_im4", "00001_0002_im4", "00001_0003_im4", "00002_0001_im4"]


def test_triplet_layout(tmp_path: Path, clean_tree: Path) -> None:
    root = tmp_path / "tri"
    shutil.copytree(clean_tree / "sequences", root / "sequences")
    (root / "tri_trainlist.txt").write_text("00001/0001\n00001/0002\n")
    (root / "tri_testlist.txt").write_text("00001/0003\n")
    listing = list_source("vimeo90k", root, "all")
    assert listing.layout == "triplet"
    assert [r.frame for r in listing.items] == [1, 2, 3] * 3
    assert set(listing.list_digests) == {"tri_trainlist.txt", "tri_testlist.txt"}


def test_other_sources(tmp_path: Path) -> None:
    parts = generate_sample(
        tmp_path / "s", train_sequences=1, val_sequences=1, frame_size=(64, 64), coco_images=3, kodak_images=2
    )
    coco = list_source("coco2014", parts.coco_root)
    assert [r.key for r in coco.items] == ["coco_000000000100", "coco_000000000137", "coco_000000000174"]
    (tmp_path / "5k.txt").write_text("/images/val2014/COCO_val2014_000000000137.jpg\n\n174\n")
    sub = list_source("coco2014", parts.coco_root, image_list=tmp_path / "5k.txt")
    assert [r.key for r in sub.items] == ["coco_000000000137", "coco_000000000174"] and len(sub.skipped) == 1
    kodak = list_source("kodak", parts.kodak_root)
    assert [r.key for r in kodak.items] == ["kodim01", "kodim02"] and {r.split for r in kodak.items} == {"test"}
    folder = list_source("folder", parts.root, val_fraction=0.2)
    assert len(folder.items) == 14 + 3 + 2 and {r.split for r in folder.items} == {"train", "val"}
    assert len({r.key for r in folder.items}) == len(folder.items)
    with pytest.raises(UserError, match="not a COCO 2014 tree"):
        list_source("coco2014", parts.kodak_root)
    with pytest.raises(UserError, match="no kodimNN.png"):
        list_source("kodak", parts.coco_root)


# ---------------------------------------------------------------- prepare on Ray


@pytest.fixture(scope="module")
def bad_run(bad_tree: Path, yolo, ray_local, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out") / "bad"
    listing = list_source("vimeo90k", bad_tree, "all")
    return out, listing, _prepare(listing, out, yolo, shard_size=4, batch_size=3)


def test_bad_inputs_are_skipped_counted_and_listed(bad_run) -> None:
    out, listing, report = bad_run
    info = json.loads((out / "dataset.json").read_text())
    by_reason = info["counts"]["skipped_by_reason"]
    assert by_reason == {
        "blank line in list file": 1,
        "corrupt image": 1,
        "duplicate of line 1": 1,
        "frame missing from the sequence": 1,
        "sequence named in the list is missing on disk": 1,
        "zero-byte file": 1,
    }
    inputs = {s["input"] for s in info["skipped"]}
    assert {
        "sequences/00001/0001/im2.png",
        "sequences/00001/0001/im3.png",
        "sequences/00001/0002/im5.png",
        "sequences/00099/0001",
        "sep_trainlist.txt:2",
        "sep_trainlist.txt:3",
    } == inputs
    assert info["counts"]["written"] == 28 - 3 == report.frames_written
    assert info["counts"]["by_split"] == {"train": {"samples": 18, "shards": 5}, "val": {"samples": 7, "shards": 2}}
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) == 25 and len({r["key"] for r in manifest}) == 25
    assert manifest[0]["shard"] == "train/shard-000000.tar" and manifest[0]["width"] == SIZE[0]
    assert sorted(p.name for p in (out / "val").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_provenance_and_exact_feature_stats(bad_run, yolo) -> None:
    out, listing, _ = bad_run
    info = json.loads((out / "dataset.json").read_text())
    prov = info["provenance"]
    assert prov["yolo"]["weights_sha256"] == yolo.provenance["weights_sha256"]
    assert prov["yolo"]["split_layer"] == 12 and prov["yolo"]["random_weights"] is True
    assert prov["feature_encoding"] == DEFAULT_ENCODING == "uint8-zstd" and prov["dataset"] == "vimeo90k"
    assert set(prov["list_digests"]) == {"sep_trainlist.txt", "sep_testlist.txt"} and prov["tool_version"]
    # Statistics merged across Ray tasks equal those of all stored features at once.
    feats = np.stack(_stored_features(out)).astype(np.float64)  # [N,256,h,w]
    assert feats.shape == (25, 256, SIZE[1] // 8, SIZE[0] // 8)
    np.testing.assert_allclose(info["s_mean"], feats.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info["s_std"], feats.std(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)
    assert 0.001 < float(np.mean(info["s_std"])) < 1.0


def test_rerun_skips_finished_shards_with_identical_bytes(bad_run, yolo) -> None:
    out, listing, _ = bad_run
    before = {p: p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))}
    manifest = (out / "manifest.parquet").read_bytes()
    again = _prepare(listing, out, yolo, shard_size=4, batch_size=3)
    assert again.shards_written == 0 and again.shards_skipped == 7
    assert (out / "manifest.parquet").read_bytes() == manifest
    victim = out / "train" / "shard-000002.tar"
    victim.unlink()  # a lost shard is rewritten, bit for bit
    redo = _prepare(listing, out, yolo, shard_size=4, batch_size=2)
    assert redo.shards_written == 1
    assert {p: p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))} == before
    assert (out / "manifest.parquet").read_bytes() == manifest


def test_foreign_out_dir_is_refused(bad_run, clean_tree: Path, yolo, tmp_path: Path) -> None:
    out, _, _ = bad_run
    other = list_source("vimeo90k", clean_tree, "middle")
    with pytest.raises(UserError, match="another preparation") as err:
        _prepare(other, out, yolo, shard_size=4, use_ray=False)
    assert "\n" not in str(err.value) and "--overwrite" in str(err.value)
    stray = tmp_path / "stray"
    (stray / "train").mkdir(parents=True)
    (stray / "train" / "shard-000000.tar").write_bytes(b"x")
    with pytest.raises(UserError, match="did not plan"):
        _prepare(other, stray, yolo, shard_size=4, use_ray=False)
    report = _prepare(other, stray, yolo, shard_size=4, use_ray=False, overwrite=True)
    assert report.info["counts"]["written"] == 4


def test_uint8_features_with_per_channel_scale(clean_tree: Path, yolo, tmp_path: Path) -> None:
    listing = list_source("vimeo90k", clean_tree, "middle")
    f16 = _prepare(listing, tmp_path / "f16", yolo, shard_size=8, use_ray=False, feature_encoding="float16")
    u8 = _prepare(listing, tmp_path / "u8", yolo, shard_size=8, use_ray=False, feature_encoding="uint8")
    assert u8.info["provenance"]["feature_encoding"] == "uint8"
    a, b = _stored_features(tmp_path / "f16"), _stored_features(tmp_path / "u8")
    for x, y in zip(a, b):
        span = (x.max(axis=(1, 2)) - x.min(axis=(1, 2)))[:, None, None]
        assert np.all(np.abs(x - y) <= span / 255 * 0.51 + 1e-3 * np.abs(x) + 1e-6)
    size16 = sum(p.stat().st_size for p in (tmp_path / "f16").glob("*/*.tar"))
    size8 = sum(p.stat().st_size for p in (tmp_path / "u8").glob("*/*.tar"))
    assert size8 < 0.75 * size16
    assert f16.info["s_std"] != u8.info["s_std"]


def test_full_disk_is_refused_and_leaves_nothing_half_written(clean_tree: Path, yolo, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tiny tmpfs here: {exc}")
    try:
        listing = list_source("vimeo90k", clean_tree, "all")
        with pytest.raises(UserError, match="disk full") as err:
            _prepare(listing, mnt / "out", yolo, shard_size=3, use_ray=False)
        assert "\n" not in str(err.value)
        assert not list(mnt.glob("**/.*.tmp"))
        for tar_path in mnt.glob("**/shard-*.tar"):  # whatever finished is whole and recorded
            assert tar_path.with_suffix(".json").is_file()
            with tarfile.open(tar_path) as tar:
                assert len({m.name.split(".", 1)[0] for m in tar.getmembers()}) == 3  # every sample of the shard
        assert not (mnt / "out" / "dataset.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_interrupted_run_resumes_to_the_same_manifest(clean_tree: Path, yolo, ray_local, tmp_path: Path) -> None:
    listing = list_source("vimeo90k", clean_tree, "all")
    full = tmp_path / "full"
    _prepare(listing, full, yolo, shard_size=1)
    cut = tmp_path / "cut"
    code = (
        "import typer, warnings; warnings.simplefilter('ignore'); from pipeline.cli.prepare import prepare_command; "
        "typer.run(prepare_command)"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        "--dataset",
        "vimeo90k",
        "--root",
        str(clean_tree),
        "--out",
        str(cut),
        "--shard-size",
        "1",
        "--num-cpus",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(cut.glob("*/shard-*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "prepare finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = len(list(cut.glob("*/shard-*.json")))
    assert 1 <= finished < 28 and not (cut / "manifest.parquet").exists()
    resumed = _prepare(listing, cut, yolo, shard_size=1)
    assert resumed.shards_skipped >= 1 and resumed.shards_written + resumed.shards_skipped == 28
    assert not list(cut.glob("**/.*.tmp"))
    assert (cut / "manifest.parquet").read_bytes() == (full / "manifest.parquet").read_bytes()
    assert pq.read_table(cut / "manifest.parquet").equals(pq.read_table(full / "manifest.parquet"))


# ---------------------------------------------------------------- CLI


def test_cli_refuses_bad_roots_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    app = _app()
    missing = runner.invoke(
        app, ["prepare", "--dataset", "vimeo90k", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert isinstance(missing.exception, UserError) and "does not exist" in str(missing.exception)
    (tmp_path / "notvimeo").mkdir()
    wrong = runner.invoke(
        app, ["prepare", "--dataset", "vimeo90k", "--root", str(tmp_path / "notvimeo"), "--out", str(tmp_path / "o")]
    )
    assert isinstance(wrong.exception, UserError) and "not a Vimeo-90K tree" in str(wrong.exception)
    unknown = runner.invoke(
        app, ["prepare", "--dataset", "imagenet", "--root", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert isinstance(unknown.exception, UserError) and "unknown" in str(unknown.exception)
    for result in (missing, wrong, unknown):
        assert "\n" not in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_cli_main_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dvcm-pipeline")
    proc = subprocess.run(
        [str(exe), "prepare", "--dataset", "vimeo90k", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_dry_run_writes_nothing(clean_tree: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(),
        [
            "prepare",
            "--dataset",
            "vimeo90k",
            "--root",
            str(clean_tree),
            "--out",
            str(tmp_path / "o"),
            "--dry-run",
            "--shard-size",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dry run: 28 frames (train 21, val 7) in 7 shards; sizes measured on 8 of them" in result.output
    assert all(e in result.output for e in ("float16-zstd", "uint8-zstd", "none (image only")), result.output
    assert not (tmp_path / "o").exists()


def test_dry_run_sizes_are_what_prepare_writes(clean_tree: Path, yolo, tmp_path: Path) -> None:
    """The measured bytes per frame of each encoding, times the frames, against the tars prepare then writes."""
    from pipeline.data.feature_encoding import FEATURE_ENCODINGS
    from pipeline.data.size_estimate import measure_sizes

    listing = list_source("vimeo90k", clean_tree, "middle")
    est = measure_sizes(listing, yolo.front, probe=len(listing.items))
    assert est.probed == est.frames == 4
    for encoding in (*FEATURE_ENCODINGS, "none"):
        _prepare(listing, tmp_path / encoding, yolo, shard_size=8, use_ray=False, feature_encoding=encoding)
        written = sum(p.stat().st_size for p in (tmp_path / encoding).glob("*/shard-*.tar"))
        ends = 2 * len(list((tmp_path / encoding).glob("*/shard-*.tar")))  # each tar ends in zero blocks
        assert est.total(encoding) <= written <= est.total(encoding) + ends * 10240, encoding
    assert est.per_frame["uint8-zstd"] < est.per_frame["uint8"] < est.per_frame["float16"]
    assert est.per_frame["none"] < est.per_frame["uint8-zstd"]


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_cli_sample_dataset_is_generated_then_listed(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(),
        [
            "prepare",
            "--dataset",
            "sample",
            "--root",
            str(tmp_path / "sample"),
            "--out",
            str(tmp_path / "o"),
            "--dry-run",
            "--frames",
            "middle",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dry run: 6 frames (train 4, val 2) in 2 shards" in result.output
    assert (tmp_path / "sample" / "vimeo_septuplet" / "sep_trainlist.txt").is_file() and not (tmp_path / "o").exists()


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_a_second_prepare_into_the_same_folder_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    """Issue 28, defect 4: the second run deleted the first one's open temp shard (a FileNotFoundError traceback).
    Here another process holds the folder's lock: prepare is refused in one line, and the temp file the holder is
    writing survives; the lock is free again once its holder is killed."""
    import fcntl

    out = tmp_path / "shards"
    out.mkdir()
    theirs = out / "train"
    theirs.mkdir()
    (theirs / ".shard-000000.tar.abc.tmp").write_bytes(b"being written")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(out / ".prepare.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        res = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "prepare", "--dataset", "sample", "--root", str(tmp_path / "s"),
             "--out", str(out), "--yolo-weights", "mini"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert res.returncode == 2 and len(lines) == 1 and "another prepare is writing into --out" in lines[0]
        assert "Traceback" not in res.stderr and (theirs / ".shard-000000.tar.abc.tmp").is_file()
    finally:
        holder.kill()
        holder.wait()
    with open(out / ".prepare.lock", "a+") as f:  # released with its holder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _together(commands: list[list[str]]) -> None:
    """Run the CLI commands at once, each with its own local Ray (no RAY_ADDRESS); each must exit 0 and print no
    traceback."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for cmd in commands
    ]
    try:
        for i, proc in enumerate(procs):
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0 and "Traceback" not in err + out, (commands[i][0], i, err[-2000:])
    finally:  # a failed first run leaves no second one behind, with its Ray
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow  # two real prepares, sweeps and evaluations at once, each with its own local Ray
def test_two_jobs_started_together_in_two_folders_both_finish(tmp_path: Path) -> None:
    """Issue 28: two dvcm jobs at once on one machine, each the quickstart's shape (prepare, a sweep through Ray Train
    and Tune, evaluate), each stage with its own local Ray; both finish, exit 0, and print no traceback (before, the second could fail
    with "Found multiple active Ray instances", also from Ray Train's placement-group cleaner)."""
    _together(
        [
            ["prepare", "--dataset", "sample", "--root", str(tmp_path / f"s{i}"), "--out", str(tmp_path / f"shards{i}"),
             "--yolo-weights", "mini", "--num-cpus", "1"]
            for i in range(2)
        ]
    )  # fmt: skip
    for i in range(2):
        assert json.loads((tmp_path / f"shards{i}" / "dataset.json").read_text())["splits"]["train"]["shards"]
    _together(
        [
            ["sweep", "--shards", str(tmp_path / f"shards{i}"), "--storage", str(tmp_path / f"runs{i}"),
             "--tracking-uri", f"sqlite:///{tmp_path / f'mlflow{i}.db'}", "--yolo-weights", "mini", "--model", "proposed",
             "--lambdas", "0.0067", "--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1"]
            for i in range(2)
        ]
    )  # fmt: skip
    names = []
    for i in range(2):
        (sweep_file,) = (tmp_path / f"runs{i}").glob("*/sweep.json")
        state = json.loads(sweep_file.read_text())
        assert [t["status"] for t in state["trials"].values()] == ["finished"], state
        names.append(sweep_file.parent.name)
    _together(
        [
            ["evaluate", "--sweep", names[i], "--tracking-uri", f"sqlite:///{tmp_path / f'mlflow{i}.db'}",
             "--coco-root", str(tmp_path / f"s{i}" / "coco2014"), "--kodak-root", str(tmp_path / f"s{i}" / "kodak"),
             "--out", str(tmp_path / f"eval{i}"), "--anchors", "jpeg", "--anchor-params", "jpeg=10,60",
             "--yolo-weights", "mini", "--redundancy-fibers", "256", "--redundancy-images", "2",
             "--redundancy-learned-steps", "20"]
            for i in range(2)
        ]
    )  # fmt: skip
    for i in range(2):
        assert (tmp_path / f"eval{i}" / "bd_table.md").is_file(), sorted((tmp_path / f"eval{i}").iterdir())
        assert len(list((tmp_path / f"eval{i}" / "curves").glob("proposed-*.json"))) == 2


@pytest.mark.slow
def test_a_frame_too_large_for_memory_is_skipped_and_listed_not_a_crash(tmp_path: Path) -> None:
    """Issue 28, defect 7: a 12000x12000 PNG in a folder tree made V_front ask for 18 GB (a RuntimeError traceback),
    in --dry-run too; now it is skipped from its header (more than 48 Mpixels), with its reason."""
    from PIL import Image

    root = tmp_path / "tree"
    root.mkdir()
    Image.new("RGB", (12000, 12000), (90, 120, 150)).save(root / "huge.png")
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(
            root / f"{i}.png"
        )
    dry = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "prepare", "--dataset", "folder", "--root", str(root), "--out",
         str(tmp_path / "dry"), "--dry-run"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr[-2000:]
    out = tmp_path / "shards"
    report = run_prepare(list_source("folder", str(root), "all", val_fraction=0.25), out, use_ray=False, progress=False)
    info = json.loads((out / "dataset.json").read_text())
    skipped = [s for s in info["skipped"] if s["input"].endswith("huge.png")]
    assert len(skipped) == 1 and skipped[0]["reason"].startswith("too large for prepare (12000x12000")
    assert report.info["counts"]["written"] == 4

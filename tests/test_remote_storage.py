"""Shard and storage paths as fsspec URLs: prepare, train, resume and evaluate against a real
S3-compatible server (moto's, in a subprocess on 127.0.0.1), prepare and train against a real GCS
emulator (gcp-storage-emulator, likewise) through gcsfs, plus ``file://`` URLs and the one-line
errors for an unknown protocol or a missing fsspec package.

The CLI runs as subprocesses with the endpoint and keys in their environment, as a user would
set them. The commands whose Ray workers touch the bucket (the first ``prepare`` and ``train``)
start their own local Ray so that its workers inherit that environment; the others join the
session's Ray (their workers only see local files).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.infra.errors import UserError
from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow  # integration: real Ray, MLflow, Chromium or subprocess CLIs

REPO = Path(__file__).resolve().parent.parent
BUCKET = "dvcm-test"
TINY = ["--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1"]
TRIAL = "proposed-16-32-2-l0.0067"


@contextlib.contextmanager
def _server(cmd: list[str], ready_url: str, log_path: Path, what: str) -> Iterator[None]:
    """Run ``cmd`` until the block ends (always stopped); ready once ``ready_url`` answers."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with bucket ``dvcm-test``; yields the AWS_* variables that reach it."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], url, log_path, "moto server"
    ):
        env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        fs = _s3(env)
        fs.mkdir(BUCKET)
        yield env


def _s3(env: dict[str, str]):  # -> s3fs.S3FileSystem
    """A client of the test server, configured explicitly (not from this process's environment)."""
    import s3fs

    return s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def _cli(args: list[str], env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    e = {**base, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=e, cwd=REPO, timeout=timeout
    )


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return res.stdout


def _objects(fs, prefix: str) -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object under ``prefix``."""
    return {k: (v["ETag"], v["LastModified"]) for k, v in fs.find(prefix, detail=True).items()}


def _check_prepared(fs) -> None:  # noqa: ANN001 - an fsspec filesystem (s3fs or gcsfs)
    """The bucket holds the whole prepared set of the two-scene sample (9 frames) and no temp object."""
    keys = set(fs.find(f"{BUCKET}/shards"))
    for name in (
        "dataset.json",
        "manifest.parquet",
        "plan.json",
        "train/shard-000000.tar",
        "train/shard-000000.json",
        "train/shard-000001.tar",
        "val/shard-000000.tar",
    ):
        assert f"{BUCKET}/shards/{name}" in keys, sorted(keys)
    assert not [k for k in keys if k.endswith(".tmp")]
    info = json.loads(fs.cat(f"{BUCKET}/shards/dataset.json"))
    assert info["counts"]["written"] == 9 and info["counts"]["by_split"]["val"]["samples"] == 3
    for shard in info["splits"]["train"]["shards"]:
        assert fs.size(f"{BUCKET}/shards/train/{shard['name']}") == shard["bytes"]


def test_prepare_train_resume_evaluate_on_s3(s3_env: dict[str, str], tmp_path: Path, ray_address: str) -> None:
    from mlflow import MlflowClient

    from pipeline.data.sample_data import generate_sample

    fs = _s3(s3_env)
    shards, runs = f"s3://{BUCKET}/shards", f"s3://{BUCKET}/runs"
    sample = generate_sample(tmp_path / "sample", train_sequences=2, val_sequences=1, coco_images=0, kodak_images=1)
    prepare = [
        "prepare",
        "--dataset",
        "vimeo90k",
        "--root",
        str(sample.vimeo_root),
        "--out",
        shards,
        "--frames",
        "3",
        "--shard-size",
        "4",
    ]
    _ok(_cli([*prepare, "--num-cpus", "2"], s3_env))
    _check_prepared(fs)

    # a rerun finds every shard finished: no shard is uploaded again, every object keeps its bytes
    before = _objects(fs, f"{BUCKET}/shards")
    out = _ok(_cli(prepare, s3_env))  # nothing to write: no Ray task runs
    assert "shards written 0, already finished 3" in " ".join(out.split())
    after = _objects(fs, f"{BUCKET}/shards")
    assert set(after) == set(before)
    assert all(after[k][0] == before[k][0] for k in before)  # same content
    assert all(after[k] == before[k] for k in before if "/shard-" in k)  # shards and sidecars not rewritten

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = ["train", "--shards", shards, "--storage", runs, *TINY, "--tracking-uri", uri, "--name", "remote"]
    _ok(_cli(train, s3_env))
    state = json.loads(fs.cat(f"{BUCKET}/runs/remote/sweep.json"))
    entry = state["trials"][TRIAL]
    final = entry["final_checkpoint"]
    assert (
        entry["status"] == "finished"
        and final.startswith(f"s3://{BUCKET}/runs/remote/train/")
        and final.endswith("/final.pt")
    )
    assert fs.isfile(final) and fs.find(f"{BUCKET}/runs/remote/tune")
    stamp = fs.info(final)["LastModified"]
    c = MlflowClient(uri)
    assert {a.path for a in c.list_artifacts(entry["run_id"], "checkpoint")} == {"checkpoint/final.pt"}

    # --resume: the finished trial is not trained again (same checkpoint object, metrics logged once)
    out = _ok(_cli([*train, "--resume", "--address", ray_address], s3_env))
    again = json.loads(fs.cat(f"{BUCKET}/runs/remote/sweep.json"))["trials"][TRIAL]
    assert again["final_checkpoint"] == final and fs.info(final)["LastModified"] == stamp
    assert [m.step for m in c.get_metric_history(entry["run_id"], "train/loss")] == [1]

    # evaluate reads the checkpoint from its URL (fetched to a local cache, then loaded weights-only)
    ev = tmp_path / "eval"
    _ok(
        _cli(
            [
                "evaluate",
                "--checkpoint",
                final,
                "--kodak-root",
                str(sample.kodak_root),
                "--anchors",
                "none",
                "--redundancy-images",
                "1",
                "--redundancy-fibers",
                "64",
                "--redundancy-k",
                "2",
                "--out",
                str(ev),
                "--tracking-uri",
                uri,
                "--address",
                ray_address,
            ],
            s3_env,
        )
    )
    (res_file,) = [p for p in ev.glob("ckpt-*/results.json")]
    res = json.loads(res_file.read_text())
    assert res["checkpoint"] == final and res["model"] == "proposed"
    (point,) = res["datasets"]["kodak"]["points"]
    assert point["bpp"] > 0 and point["images"] == 1
    assert list((ev / ".downloads").rglob("final.pt"))


@pytest.fixture(scope="module")
def gcs_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A gcp-storage-emulator server on 127.0.0.1 with bucket ``dvcm-test``; yields the variables that reach it.

    ``STORAGE_EMULATOR_HOST`` is gcsfs's endpoint; ``FSSPEC_GS_TOKEN=anon`` (fsspec's config) skips the
    credential lookup; ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` skips gcsfs's gRPC bucket-type probe,
    which the emulator cannot answer (each probe would retry for 60 s).
    """
    log_path = tmp_path_factory.mktemp("gcs") / "gcs-emulator.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--default-bucket",
        BUCKET,
    ]
    with _server(cmd, f"{url}/storage/v1/b/{BUCKET}", log_path, "GCS emulator"):  # the bucket exists once it answers
        yield {"STORAGE_EMULATOR_HOST": url, "FSSPEC_GS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _gcs(env: dict[str, str]):  # -> gcsfs.core.GCSFileSystem
    """A client of the emulator, configured explicitly (not from this process's environment)."""
    from gcsfs.core import (
        GCSFileSystem,  # the plain HTTP client, whatever GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT says
    )

    return GCSFileSystem(
        token="anon", endpoint_url=env["STORAGE_EMULATOR_HOST"], skip_instance_cache=True, use_listings_cache=False
    )


def test_prepare_and_train_on_gcs_emulator(gcs_env: dict[str, str], tmp_path: Path) -> None:
    """prepare into gs://, a rerun that uploads nothing, then train reading shards from and storing runs in gs://."""
    from pipeline.data.sample_data import generate_sample

    fs = _gcs(gcs_env)
    shards, runs = f"gs://{BUCKET}/shards", f"gs://{BUCKET}/runs"
    sample = generate_sample(tmp_path / "sample", train_sequences=2, val_sequences=1, coco_images=0, kodak_images=0)
    prepare = [
        "prepare",
        "--dataset",
        "vimeo90k",
        "--root",
        str(sample.vimeo_root),
        "--out",
        shards,
        "--frames",
        "3",
        "--shard-size",
        "4",
        "--num-cpus",
        "2",
    ]
    _ok(_cli(prepare, gcs_env))  # a local Ray of its own: its workers upload the shards
    _check_prepared(fs)

    # a rerun finds every shard finished: no shard object gets a new generation
    before = {k: v["generation"] for k, v in fs.find(f"{BUCKET}/shards", detail=True).items()}
    out = _ok(_cli(prepare, gcs_env))
    assert "shards written 0, already finished 3" in " ".join(out.split())
    after = {k: v["generation"] for k, v in fs.find(f"{BUCKET}/shards", detail=True).items()}
    assert set(after) == set(before) and all(after[k] == before[k] for k in before if "/shard-" in k)

    # train: Ray Train workers stream the tars from gs://, Ray Train/Tune write checkpoints and sweep.json there
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _ok(
        _cli(
            ["train", "--shards", shards, "--storage", runs, *TINY, "--tracking-uri", uri, "--name", "remote"], gcs_env
        )
    )  # a local Ray of its own too
    entry = json.loads(fs.cat(f"{BUCKET}/runs/remote/sweep.json"))["trials"][TRIAL]
    final = entry["final_checkpoint"]
    assert entry["status"] == "finished" and final.startswith(f"gs://{BUCKET}/runs/remote/train/"), entry
    assert final.endswith("/final.pt") and fs.isfile(final) and fs.find(f"{BUCKET}/runs/remote/tune")


def test_tar_on_s3_appears_only_when_committed(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from pipeline.data.shards import AtomicTarWriter

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    fs = _s3(s3_env)
    url = f"s3://{BUCKET}/atomic/shard-000000.tar"
    with pytest.raises(RuntimeError, match="interrupted"):
        with AtomicTarWriter(url) as tar:
            tar.write("a", {"txt": b"x" * 1000})
            raise RuntimeError("interrupted")
    assert not fs.exists(url)
    with AtomicTarWriter(url) as tar:
        tar.write("a", {"txt": b"x" * 1000})
        assert not fs.exists(url)  # nothing visible before the commit
        size, digest = tar.commit()
    data = fs.cat(url)
    assert len(data) == size and hashlib.sha256(data).hexdigest() == digest


def test_file_url_for_prepare_and_reader(tmp_path: Path, yolo) -> None:
    from pipeline.data.prepare import run_prepare
    from pipeline.data.sample_data import generate_sample
    from pipeline.data.shards import make_loader, shard_urls
    from pipeline.data.sources import list_source

    parts = generate_sample(
        tmp_path / "sample", train_sequences=1, val_sequences=1, frame_size=(192, 128), coco_images=0, kodak_images=0
    )
    listing = list_source("vimeo90k", parts.vimeo_root, 3)
    url = (tmp_path / "shards").as_uri()  # file:///...
    common = dict(shard_size=2, use_ray=False, front=yolo.front, yolo_provenance=dict(yolo.provenance), progress=False)
    first = run_prepare(listing, url, **common)
    assert first.shards_written == 4 and (tmp_path / "shards" / "dataset.json").is_file()
    assert run_prepare(listing, url, **common).shards_written == 0  # resumes like a plain path
    assert all(u.startswith("file:///") for u in shard_urls(url, "train"))
    by_url = [x for x, _ in make_loader(url, "train", crop=64, batch_size=1, shuffle_buffer=0)]
    by_path = [x for x, _ in make_loader(str(tmp_path / "shards"), "train", crop=64, batch_size=1, shuffle_buffer=0)]
    assert len(by_url) == 3 and all((a == b).all() for a, b in zip(by_url, by_path))


def test_unknown_protocol_or_missing_package_is_one_line(tmp_path: Path) -> None:
    from pipeline.infra import storage

    with pytest.raises(UserError, match="unknown storage protocol 'nosuch'"):
        storage.check("nosuch://bucket/shards")
    cases = [("nosuch://bucket/shards", "unknown storage protocol")]
    if importlib.util.find_spec("gcsfs") is None:
        cases.append(("gs://bucket/shards", "pip install gcsfs"))
    for out, needle in cases:
        res = _cli(["prepare", "--dataset", "sample", "--root", str(tmp_path / "s"), "--out", out], {})
        assert res.returncode == 2, res.stderr[-2000:]
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr
        assert not (tmp_path / "s").exists()  # refused before any work


def test_a_store_that_refuses_access_and_an_unknown_tracking_store_are_one_line(tmp_path: Path) -> None:
    """Issue 28, defect 11: a NoCredentialsError traceback and an MLflow traceback. No network: the instance
    metadata service is switched off, so botocore looks for credentials in the environment and files only."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
    }
    res = _cli(["sweep", "--shards", "s3://nobucket/x", "--lambdas", "0.01", "--storage", str(tmp_path / "r")], env)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and "the storage refused access" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    res = _cli(["evaluate", "--tracking-uri", "bogus://x", "--checkpoint", "zoo:proposed-l0.0932"], {})
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and "MLflow tracking store bogus://x cannot be used" in lines[0]


def test_one_prepare_at_a_time_on_s3_and_a_dead_holders_lock_is_taken_over(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object-store lock of ``prepare --out s3://…`` (issue 28): a lock object created only if none exists
    (S3's If-None-Match, on moto's server), refused while its holder lives, taken over when it is gone, and a holder
    whose lock became another's says so instead of overwriting it."""
    from pipeline.data import out_lock

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    fs = _s3(s3_env)
    out = f"s3://{BUCKET}/locked"
    lock = f"{BUCKET}/locked/.prepare.lock"
    with out_lock.out_dir_lock(out):
        holder = json.loads(fs.cat(lock))
        assert holder["pid"] == os.getpid() and holder["host"] == out_lock.this_machine()["host"]
        with pytest.raises(UserError, match=r"^another prepare \(host .*, pid \d+, heartbeat \d+ s ago\) is writing"):
            with out_lock.out_dir_lock(out):
                pass
    assert not fs.exists(lock)  # released

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    for stale in (
        {**out_lock.this_machine(), "pid": int(dead.stdout), "heartbeat": now},  # killed on this machine
        {"host": "elsewhere", "pid": 1, "heartbeat": now - out_lock.LEASE_SECONDS - 5},  # silent for a lease
    ):
        fs.pipe_file(lock, json.dumps(stale).encode())
        with out_lock.out_dir_lock(out):
            assert json.loads(fs.cat(lock))["pid"] == os.getpid()
    fs.pipe_file(lock, json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": now}).encode())
    with pytest.raises(UserError, match="host elsewhere, pid 1"):
        with out_lock.out_dir_lock(out):
            pass
    fs.rm_file(lock)

    monkeypatch.setattr(out_lock, "HEARTBEAT_SECONDS", 0.2)
    with pytest.raises(UserError, match="another prepare took over the lock"):
        with out_lock.out_dir_lock(out) as still_ours:
            still_ours()
            successor = {"host": "elsewhere", "pid": 1, "token": "theirs", "heartbeat": time.time()}
            fs.pipe_file(lock, json.dumps(successor).encode())
            time.sleep(1.0)
            still_ours()  # what prepare calls after every shard: it stops writing
    assert json.loads(fs.cat(lock))["token"] == "theirs"  # neither overwritten by a heartbeat nor removed
    fs.rm_file(lock)


def test_shards_on_s3_are_checked_before_training_as_local_ones(
    s3_env: dict[str, str], tiny_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28, defect 3 on an object store: the sizes (one listing) and sha256 that dataset.json records are
    checked before a sweep trains, as for a local folder; a damaged, truncated or missing shard is one line."""
    from pipeline.data.shards import check_shard_files, read_dataset_info

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    fs = _s3(s3_env)
    fs.put(str(tiny_shards), f"{BUCKET}/checked", recursive=True)
    url = f"s3://{BUCKET}/checked"
    info = read_dataset_info(url)
    assert check_shard_files(url, info) == "3 shards checked by size and sha256"
    key = f"{BUCKET}/checked/train/shard-000000.tar"
    data = bytearray(fs.cat(key))
    data[2000] ^= 0xFF  # one flipped byte, same size
    fs.pipe_file(key, bytes(data))
    with pytest.raises(UserError, match=r"^shard train/shard-000000\.tar does not have the sha256"):
        check_shard_files(url, info)
    fs.pipe_file(key, bytes(data[:-1024]))  # truncated at a tar block
    with pytest.raises(UserError, match=r"^shard train/shard-000000\.tar is \d+ bytes, dataset.json records"):
        check_shard_files(url, info, verify=False)
    fs.rm_file(key)
    with pytest.raises(UserError, match="is missing"):
        check_shard_files(url, info)

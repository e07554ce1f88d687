"""``train-detector``: the driver. Fits anchors to the world's boxes, opens the MLflow run, runs the
Ray Train ``TorchTrainer`` (resuming from its latest checkpoint when stopped) with a progress bar
read from the run's metrics, then writes the Darknet ``detector.cfg`` / ``detector.weights``, the
provenance ``detector.json``, and scores the trained and the random-weight network on the test split
of an unseen world seed."""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.data.world import DEFAULT_WORLD_STYLE, WORLD_STYLES
from pipeline.infra.atomic import atomic_write_bytes, atomic_write_json
from pipeline.infra.errors import UserError

CFG_NAME, WEIGHTS_NAME, PROVENANCE_NAME = "detector.cfg", "detector.weights", "detector.json"
RUN_NAME = "detector"
FAMILY_WIDTHS = (0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class DetectorSettings:
    """What the detector is and how it is trained; a rerun with other settings is refused."""

    world_seed: int = 0
    test_world_seed: int = 1  # the unseen world of the final score
    world_style: str = DEFAULT_WORLD_STYLE  # how the world's backgrounds look (pipeline.data.world.WORLD_STYLES)
    width: float = 0.125
    steps: int = 4000  # about 12 minutes on 2 cores (0.17 s a step); held-out mAP still rises at 1500
    batch_size: int = 8
    sizes: tuple[int, ...] = (224, 256, 288, 320)
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 5e-4
    val_images: int = 24
    test_images: int = 60
    log_every: int = 25
    eval_every: int = 250
    seed: int = 0
    workers: int = 1
    threads: int = 2

    def check(self) -> None:
        if self.width not in FAMILY_WIDTHS:  # a codec rebuilds its front from C_s = 256·width: other widths round apart
            raise UserError(f"--width {self.width} is not one of the family's widths 0.125, 0.25, 0.5, 1")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("--steps and --batch-size must be positive")
        if self.world_style not in WORLD_STYLES:
            raise UserError(f"--world-style {self.world_style!r}: one of {', '.join(WORLD_STYLES)}")
        if self.test_world_seed == self.world_seed:
            raise UserError("--test-world-seed must differ from --world-seed: the final score is on an unseen world")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``224,256,288`` -> (224, 256, 288); each a positive multiple of 32 (YOLOv3's total stride)."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--sizes {text!r} does not parse; write pixel sizes such as 224,256,288") from None
    if not sizes or any(v < 32 or v % 32 for v in sizes):
        raise UserError(f"--sizes {text!r}: every size must be a positive multiple of 32")
    return sizes


def command_line(out: Path, settings: DetectorSettings) -> str:
    """The ``train-detector`` command that trains these settings into ``out`` (for the provenance)."""
    options = {**asdict(settings), "sizes": ",".join(map(str, settings.sizes))}
    skip = {"warmup", "weight_decay", "log_every"}  # not options of the command: fixed by the code version
    return shlex.join(
        [
            "dvcm-pipeline",
            "train-detector",
            "--out",
            str(out),
            *(x for k, v in options.items() if k not in skip for x in (f"--{k.replace('_', '-')}", str(v))),
        ]
    )


def _ray_run_dir(out: Path) -> Path:
    return out / "ray"


def _settings_file(out: Path) -> Path:
    return out / "detector_settings.json"


def _check_or_record(out: Path, settings: DetectorSettings, run_id: str | None) -> str | None:
    """The run id of an earlier try with the same settings; refuses other settings in one line."""
    path = _settings_file(out)
    if path.is_file():
        saved = json.loads(path.read_text())
        saved["settings"] = {"world_style": DEFAULT_WORLD_STYLE, **saved["settings"]}  # saved before world styles
        if saved["settings"] != json.loads(json.dumps(asdict(settings))):
            diff = sorted(
                k for k, v in asdict(settings).items() if json.loads(json.dumps(v)) != saved["settings"].get(k)
            )
            raise UserError(
                f"{out} holds a detector trained with other settings ({', '.join(diff)}); "
                "pass another --out or the same options"
            )
        previous = saved.get("run_id")
    else:
        previous = None
    if run_id is not None:  # the run in use (a new one when the tracking store was replaced)
        atomic_write_json(path, {"settings": asdict(settings), "run_id": run_id})
    return previous


def _follow(uri: str, run_id: str, total: int, done: threading.Event) -> None:
    """The progress of the run, read from the ``progress/step``, ``train/loss`` and ``val/map50`` metrics that
    the worker logs (it may run on another node): a bar on a terminal, plain lines in a log."""
    from pipeline.infra import tracking
    from pipeline.infra.progress import StepProgress

    client = tracking.client(uri)
    metrics: dict[str, float] = {}

    def detail() -> str:
        text = f"loss {metrics['train/loss']:.2f}" if "train/loss" in metrics else ""
        return text + (f", val mAP@0.5 {metrics['val/map50']:.3f}" if "val/map50" in metrics else "")

    with StepProgress("train-detector", total, "steps", transient=False, detail=detail) as bar:
        while True:
            stop = done.wait(2.0)
            try:
                metrics.update(client.get_run(run_id).data.metrics)
            except Exception:  # noqa: BLE001 - a busy store only delays the bar
                pass
            bar.advance(int(metrics.get("progress/step", 0)) - bar.done)
            if stop:
                return


def _fit_anchors(settings: DetectorSettings) -> list[tuple[int, int]]:
    from dvcm.yolo_loss import fit_anchors
    from pipeline.detector.world_batches import training_box_sizes

    return fit_anchors(
        training_box_sizes(settings.world_seed, 400, settings.sizes, settings.world_style), k=9, seed=settings.seed
    )


def _train(out: Path, settings: DetectorSettings, config: dict[str, Any], uri: str, run_id: str):  # -> Checkpoint
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.detector.train_loop import train_detector_loop
    from pipeline.infra.ray_runtime import train_logging_config

    trainer = TorchTrainer(
        train_detector_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=settings.workers, resources_per_worker={"CPU": settings.threads}),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(_ray_run_dir(out).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),
            logging_config=train_logging_config(),
        ),
    )
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(uri, run_id, settings.steps, done), daemon=True)
    follower.start()
    try:
        result = trainer.fit()  # Ray Train V2 resumes from the run's latest checkpoint (same name and storage)
    finally:
        done.set()
        follower.join(timeout=10)
    if result.error is not None or result.checkpoint is None:
        raise UserError(f"the detector's training failed ({result.error}); rerun the same command to resume")
    return result.checkpoint


def train_detector(
    out: Path, settings: DetectorSettings, tracking_uri: str | None = None, address: str | None = None
) -> dict[str, Any]:
    """Train (or resume) the mini detector into ``out``; returns the provenance it writes."""
    import torch

    from dvcm.darknet_cfg import YOLOV3_NET, YOLOV3_YOLO_TRAINING, DarknetCfg, write_cfg
    from dvcm.fileio import file_sha256
    from dvcm.yolo import darknet_bytes
    from pipeline.data.world import WORLD_CLASSES
    from pipeline.detector.train_loop import STATE_NAME, build_network
    from pipeline.detector.world_batches import detection_map50, feature_statistics, held_out_scenes, world_digest
    from pipeline.infra import tracking
    from pipeline.infra.ray_runtime import init_ray

    settings.check()
    out.mkdir(parents=True, exist_ok=True)
    provenance_path = out / PROVENANCE_NAME
    uri = tracking.resolve_tracking_uri(tracking_uri)
    run_id = _check_or_record(out, settings, None)
    if provenance_path.is_file() and run_id is not None:
        print(f"{out / WEIGHTS_NAME} is already trained with these settings; nothing to do")
        return json.loads(provenance_path.read_text())
    anchors = _fit_anchors(settings)
    params = {**asdict(settings), "anchors": anchors, "classes": len(WORLD_CLASSES)}
    description = (
        f"mini YOLOv3 (width {settings.width}, {len(WORLD_CLASSES)} classes) trained on the synthetic "
        f"world {settings.world_seed} ({settings.world_style})"
    )
    run_id = tracking.start_parent_run(uri, RUN_NAME, params, existing_run_id=run_id, description=description)
    _check_or_record(out, settings, run_id)
    print(
        f"train-detector: {settings.steps} steps of {settings.batch_size} world scenes at {list(settings.sizes)} px, "
        f"anchors {anchors}; MLflow run {run_id}",
        flush=True,
    )
    config = {**params, "anchors": [list(a) for a in anchors], "tracking_uri": uri, "run_id": run_id}
    init_ray(address)
    t0 = time.perf_counter()
    checkpoint = _train(out, settings, config, uri, run_id)
    model = build_network(config)
    with checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / STATE_NAME, map_location="cpu", weights_only=True)["model"])
    model.eval()
    test = held_out_scenes(settings.test_world_seed, "test", settings.test_images, settings.world_style)
    trained = detection_map50(model, test)
    random_network = build_network(config).eval()
    random_start = detection_map50(random_network, test)
    features = {"trained": feature_statistics(model, test), "random_weights": feature_statistics(random_network, test)}
    cfg = DarknetCfg(
        model.specs,
        len(WORLD_CLASSES),
        model.anchors,
        [
            *(kv for kv in YOLOV3_NET if kv[0] not in ("width", "height", "batch", "subdivisions")),
            ("batch", str(settings.batch_size)),
            ("subdivisions", "1"),
            ("width", str(max(settings.sizes))),
            ("height", str(max(settings.sizes))),
        ],
        [list(YOLOV3_YOLO_TRAINING) for _ in range(3)],
    )
    atomic_write_bytes(out / CFG_NAME, write_cfg(cfg).encode())
    atomic_write_bytes(
        out / WEIGHTS_NAME, darknet_bytes(model, seen=settings.steps * settings.batch_size * settings.workers)
    )
    provenance = {
        "name": f"mini YOLOv3 (width {settings.width}, {len(WORLD_CLASSES)} classes) trained on the synthetic world"
        + ("" if settings.world_style == DEFAULT_WORLD_STYLE else f" ({settings.world_style})"),
        "classes": [name for _, name in WORLD_CLASSES],
        "world_seed": settings.world_seed,
        "data_digest": world_digest(settings.world_seed, style=settings.world_style),
        "world_style": settings.world_style,
        "command": command_line(out, settings),
        "code_version": tracking.code_version(),
        "settings": asdict(settings),
        "anchors": [list(a) for a in model.anchors],
        "test_world_seed": settings.test_world_seed,
        "test_images": settings.test_images,
        "test_map50": trained["map50"],
        "test_map": trained["map"],
        "random_weights_test_map50": random_start["map50"],
        "s_statistics_on_test": features,
        "train_seconds_this_call": round(time.perf_counter() - t0, 1),
        "cfg_sha256": file_sha256(out / CFG_NAME),
        "weights_sha256": file_sha256(out / WEIGHTS_NAME),
        "mlflow_run_id": run_id,
    }
    tracking.log_metrics(
        uri,
        run_id,
        {
            "test/map50": trained["map50"],
            "test/map": trained["map"],
            "test/random_weights_map50": random_start["map50"],
        },
        settings.steps,
    )
    for name in (CFG_NAME, WEIGHTS_NAME):
        tracking.log_artifact(uri, run_id, out / name)
    atomic_write_json(provenance_path, provenance)
    tracking.log_artifact(uri, run_id, provenance_path)
    tracking.end_run(uri, run_id)
    return provenance

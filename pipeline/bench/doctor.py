"""``dvcm-pipeline doctor``: a self-check of this machine in at most two minutes, one PASS, FAIL or SKIP line per
check with its figure.

It checks what is installed (torch and CUDA, bf16, compressai, Ray, MLflow, each against the ranges dvcm declares),
that a file encoded on the device decodes on the CPU to the encoder's symbols and the reverse (real rANS bytes
through :mod:`dvcm.bitstream`), one training step of ``proposed`` at N = 192 in fp32 and AMP through the step that
training runs (:func:`pipeline.training.step.train_step`), a one-process all-reduce through ``torch.distributed``
with the backend a trial uses, and, when asked, that a Ray cluster sees the GPUs and that the shard loader keeps up
with the step. What is not installed is a SKIP with its reason: only torch and compressai are needed (Ray, MLflow
and WebDataset are imported inside the checks that use them), so the first tier of the GPU tests runs it on a bare
GPU box.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.infra.errors import UserError

SCHEMA = "dvcm-doctor/1"
DEVICES = ("cuda", "cpu")
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
# Packages the workflow needs that a bare GPU box may lack: their checks say SKIP without them.
OPTIONAL = ("ray", "mlflow", "webdataset")
INSTALL_HINT = {
    "ray": "pip install 'ray[default,data,train,tune]' (prepare, sweep and evaluate need it)",
    "mlflow": "pip install mlflow (sweep and evaluate log to it)",
    "webdataset": "pip install webdataset (the shard reader needs it)",
}
RATE_KEYS = ("bpp_y1", "bpp_z1", "bpp_y2", "bpp_z2")
AMP_RATE_TOLERANCE = 0.01  # AMP's rate terms within 1 % of fp32's on the same weights, batch and noise
CONFIG = {"N": 192, "M1": 64, "M2": 192, "H": 2}  # proposed, the paper's first configuration


@dataclass(frozen=True)
class Workload:
    """The training step's size on a device: the paper's batch and crop on a GPU, a small one on a CPU."""

    crop: int
    batch: int
    warmup: int
    steps: int


WORKLOADS = {
    "cuda": Workload(crop=256, batch=16, warmup=2, steps=5),
    "cpu": Workload(crop=128, batch=2, warmup=0, steps=1),
}


@dataclass
class Check:
    """One line of the table: what was checked, PASS/FAIL/SKIP, its figure (or the reason), and its numbers."""

    name: str
    status: str
    figure: str
    values: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<40} {self.figure}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "figure": self.figure,
            "seconds": round(self.seconds, 3),
            "values": self.values,
        }


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module blocked in sys.modules
        return False


def availability(modules: tuple[str, ...] = OPTIONAL) -> dict[str, bool]:
    """Which of the optional packages are installed."""
    return {m: installed(m) for m in modules}


def declared_ranges(dist: str = "dvcm") -> dict[str, str]:
    """The version ranges that the installed ``dist`` declares for its requirements (empty when it is not installed,
    e.g. a checkout on ``PYTHONPATH``)."""
    from importlib import metadata

    try:
        requires = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return {}
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return {}
    ranges = {}
    for text in requires:
        req = Requirement(text)
        if req.marker is None:  # extras (test, remote) are not what this machine runs
            ranges[req.name.lower()] = str(req.specifier)
    return ranges


def _version_note(package: str, version: str, ranges: Mapping[str, str]) -> str:
    spec = ranges.get(package)
    if not spec:
        return ""
    from packaging.specifiers import SpecifierSet

    if SpecifierSet(spec).contains(version, prereleases=True):
        return f" (dvcm declares {spec})"
    return f" (outside dvcm's {spec}: untested; the checks below say whether it works)"


class DoctorContext:
    """What several checks share: the device, the seeded front and codec (built once), the step's figures."""

    def __init__(self, device: str, available: Mapping[str, bool]) -> None:
        import torch

        self.torch = torch
        self.device_name = device
        self.device = torch.device(device)
        self.available = dict(available)
        self.cuda_ok = device != "cuda" or torch.cuda.is_available()
        self.workload = WORKLOADS[device]
        self._model: Any = None
        self.step_samples_per_s: float | None = None
        self.fp32_rates: dict[str, float] | None = None

    def model(self):  # -> dvcm.models.ScalableCodec, on the CPU
        """The seeded ``proposed`` (64,192,2) at N = 192 with the seeded random YOLOv3 front, built once."""
        if self._model is None:
            from dvcm.registry import build
            from dvcm.yolo import build_yolov3

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "seeded random weights": what the doctor wants
                yolo = build_yolov3(None, seed=0)
            self.torch.manual_seed(0)
            self._model = build("proposed", front=yolo.front, yolo_provenance=dict(yolo.provenance), **CONFIG)
        return self._model

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (None: unchanged) for the block."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- what is installed -----------------------------------------------------------------------------------------


def check_torch(ctx: DoctorContext, ranges: Mapping[str, str]) -> Check:
    """torch's version and build, the GPUs it sees; FAIL when CUDA is asked for and torch has none."""
    torch = ctx.torch
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    figure = f"torch {torch.__version__}{_version_note('torch', torch.__version__, ranges)}, {build}"
    values: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        values.update(gpus=names, cudnn=torch.backends.cudnn.version())
        figure += f", {len(names)} GPU(s): {', '.join(sorted(set(names)))}"
    else:
        values["gpus"] = []
        figure += ", no GPU visible"
    if not ctx.cuda_ok:
        why = (
            "torch is a CPU-only build: install a CUDA build of torch"
            if not torch.version.cuda
            else "torch.cuda.is_available() is False: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
        )
        return Check("torch", FAIL, f"--device cuda, but {why}; {figure}", values)
    return Check("torch", PASS, figure, values)


def check_bf16(ctx: DoctorContext) -> Check:
    """bf16: what AMP (``--precision amp``) runs the transforms in; a bf16 convolution must run and stay finite."""
    torch = ctx.torch
    values: dict[str, Any] = {}
    if ctx.device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the argument
            native = torch.cuda.is_bf16_supported()
        values["native"] = bool(native)
        if not native:
            return Check("bf16", FAIL, "this GPU has no native bf16: train with --precision fp32", values)
    conv = torch.nn.Conv2d(3, 8, 5, padding=2).to(ctx.device)
    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16):
        out = conv(torch.rand(1, 3, 32, 32, device=ctx.device))
    ok = out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    values["autocast_dtype"] = str(out.dtype)
    where = "the GPU" if ctx.device.type == "cuda" else "the CPU (AMP training is for GPUs)"
    return Check("bf16", PASS if ok else FAIL, f"bf16 autocast convolution on {where}: {out.dtype}", values)


def check_package(package: str, required: bool, available: Mapping[str, bool], ranges: Mapping[str, str]) -> Check:
    """A package's version (with dvcm's range); a missing optional one is a SKIP with how to install it."""
    from importlib import metadata

    if not available.get(package, True) or not installed(package):
        if required:
            return Check(package, FAIL, f"{package} is not installed; pip install {package}")
        return Check(package, SKIP, f"not installed: {INSTALL_HINT.get(package, 'pip install ' + package)}")
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = getattr(__import__(package), "__version__", "unknown")
    return Check(package, PASS, f"{package} {version}{_version_note(package, version, ranges)}", {"version": version})


def check_zoo(name: str = "proposed-l0.0932") -> Check:
    """A bundled codec checkpoint loads: its entropy models' tensors must fit this compressai (1.2.6 names them
    otherwise)."""
    from importlib import metadata

    from dvcm.checkpoint import load_checkpoint
    from dvcm.errors import CheckpointError
    from dvcm.zoo import codec_zoo, zoo_checkpoint

    if name not in codec_zoo():
        return Check("zoo checkpoint", SKIP, f"this install ships no zoo:{name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_checkpoint(zoo_checkpoint(name))
    except CheckpointError as exc:
        return Check(
            "zoo checkpoint",
            FAIL,
            f"zoo:{name} does not load with compressai {metadata.version('compressai')} ({str(exc)[:160]}...); "
            "pip install 'compressai>=1.2.7'",
        )
    return Check("zoo checkpoint", PASS, f"zoo:{name} loads with compressai {metadata.version('compressai')}")


# -- the codec across devices ----------------------------------------------------------------------------------


def _decoded_latents(model, data: bytes):  # noqa: ANN001, ANN202 - (ŷ1, ŷ2) decoded from a dvcm file
    """Both layers of a file decoded to their symbols, through dvcm.bitstream's own parsing and checks."""
    from dvcm import bitstream

    header, base = bitstream._base_strings(data, model)
    start = bitstream.HEADER_SIZE + header.base_length
    segment = bitstream._segment(data, start, header.enhancement_length, header.enhancement_crc, "enhancement")
    enhancement = bitstream._unpack_strings(segment, model.segment_counts[1], "enhancement")
    out = model.decompress(base, enhancement, header.hw, header.padded_hw)
    return out["y1_hat"], out["y2_hat"]


def check_codec(ctx: DoctorContext, encoder: str, tmp: Path) -> Check:
    """A file encoded on one side decodes on the other to exactly the encoder's symbols (ŷ1, ŷ2); ``encoder`` is
    ``device`` (encode on the device, decode on the CPU) or ``cpu`` (the reverse).

    On a CPU-only machine the device side is the CPU at torch's thread count and the CPU side the CPU at one thread:
    the scale indexes must depend on neither (the hyper-synthesis runs in float64 when coding)."""
    torch = ctx.torch
    from dvcm import bitstream
    from pipeline.data.sample_data import sample_image

    if not ctx.cuda_ok:
        return Check(f"codec {encoder} -> other side", SKIP, "needs CUDA (see the torch line)")
    base = ctx.model()
    if getattr(base, "fingerprint", None) is None:
        base.update(force=True)
    base.eval()
    on_gpu = ctx.device.type == "cuda"
    # (model, threads, label) of each side
    device_side = (copy.deepcopy(base).to(ctx.device) if on_gpu else base, None, ctx.device_name)
    cpu_side = (base, None if on_gpu else 1, "cpu")
    if not on_gpu:
        device_side = (base, None, f"cpu ({torch.get_num_threads()} threads)")
        cpu_side = (base, 1, "cpu (1 thread)")
    (enc_model, enc_threads, enc_label), (dec_model, dec_threads, dec_label) = (
        (device_side, cpu_side) if encoder == "device" else (cpu_side, device_side)
    )
    enc_device = next(enc_model.parameters()).device
    x = torch.from_numpy(sample_image(seed=3, size=(320, 200))).permute(2, 0, 1)[None].float() / 255
    t0 = time.perf_counter()
    with _threads(enc_threads), torch.no_grad():
        data = bitstream.compress(enc_model, x.to(enc_device))
        expected = enc_model.latents_and_scales(x.to(enc_device))
    t_enc = time.perf_counter() - t0
    path = tmp / f"doctor-{encoder}.dvcm"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with _threads(dec_threads), torch.no_grad():
        y1, y2 = _decoded_latents(dec_model, path.read_bytes())
    t_dec = time.perf_counter() - t0
    symbols = expected["y1_hat"].numel() + expected["y2_hat"].numel()
    mismatched = int((y1.cpu() != expected["y1_hat"].cpu()).sum() + (y2.cpu() != expected["y2_hat"].cpu()).sum())
    values = {
        "bytes": len(data),
        "symbols": symbols,
        "mismatched": mismatched,
        "encode_s": round(t_enc, 3),
        "decode_s": round(t_dec, 3),
    }
    figure = (
        f"{symbols} symbols of ŷ1, ŷ2 {'identical' if mismatched == 0 else f'DIFFER at {mismatched}'}"
        f" ({len(data)} B file of 320x200; encode {t_enc:.2f} s, decode {t_dec:.2f} s)"
    )
    return Check(f"codec {enc_label} -> {dec_label}", PASS if mismatched == 0 else FAIL, figure, values)


# -- one training step -------------------------------------------------------------------------------------------


def _peak_memory(ctx: DoctorContext) -> tuple[float, str]:
    """Peak memory: the device's allocator peak on CUDA, else this process's peak resident set (GiB)."""
    if ctx.device.type == "cuda":
        return ctx.torch.cuda.max_memory_allocated(ctx.device) / 2**30, "GPU peak allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20), "process peak RSS"


def _run_steps(ctx: DoctorContext, use_amp: bool) -> tuple[dict[str, float], float, float, str]:
    """Warm-up and timed steps of :func:`train_step` from the seeded weights; returns the first step's rate terms,
    steps/s, and the peak memory with its kind."""
    torch = ctx.torch
    from dvcm.loss import ScalableRDLoss
    from dvcm.train_utils import configure_optimizers
    from pipeline.training.step import train_step

    w = ctx.workload
    model = copy.deepcopy(ctx.model()).to(ctx.device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(w.batch, 3, w.crop, w.crop, generator=gen).to(ctx.device)
    with torch.no_grad():
        s = model.front(x)  # as the shards hold it
    net_opt, aux_opt = configure_optimizers(model, 1e-4, 1e-3)
    criterion = ScalableRDLoss(0.0067, 1.0).to(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    first: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(w.warmup + w.steps):
        if i == 0:
            torch.manual_seed(1)  # the same quantisation noise in fp32 and AMP
        terms = train_step(model, model, criterion, net_opt, aux_opt, (x, s), use_amp=use_amp)
        if i == 0:
            first = {k: float(terms[k]) for k in RATE_KEYS}
        if i == w.warmup - 1:
            ctx.synchronize()
            t0 = time.perf_counter()
    ctx.synchronize()
    steps_per_s = w.steps / (time.perf_counter() - t0)
    peak, kind = _peak_memory(ctx)
    return first, steps_per_s, peak, kind


def check_step(ctx: DoctorContext, precision: str) -> Check:
    """One training step of proposed (64,192,2), N = 192, in ``precision``: steps/s and peak memory; under AMP the
    rate terms of the first step must be within 1 % of fp32's."""
    name = f"train step {precision}"
    if not ctx.cuda_ok:
        return Check(name, SKIP, "needs CUDA (see the torch line)")
    if precision == "amp" and ctx.device.type != "cuda":
        return Check(
            name,
            SKIP,
            "AMP is a GPU setting (--precision amp needs --use-gpu); bf16 autocast on this CPU was 5-90x slower "
            "than fp32 when measured",
        )
    w = ctx.workload
    rates, steps_per_s, peak, kind = _run_steps(ctx, use_amp=precision == "amp")
    samples_per_s = steps_per_s * w.batch
    ctx.step_samples_per_s = max(ctx.step_samples_per_s or 0.0, samples_per_s)
    values: dict[str, Any] = {
        "steps_per_s": round(steps_per_s, 4),
        "samples_per_s": round(samples_per_s, 3),
        "peak_memory_gib": round(peak, 3),
        "peak_memory_kind": kind,
        "batch": w.batch,
        "crop": w.crop,
        "warmup_steps": w.warmup,
        "timed_steps": w.steps,
        "rates": rates,
    }
    timed = f"{w.steps} step{'s' if w.steps > 1 else ''} after {w.warmup} warm-up" if w.warmup else "the first step"
    figure = (
        f"{steps_per_s:.2f} steps/s ({samples_per_s:.1f} samples/s, batch {w.batch} of {w.crop}x{w.crop}, "
        f"N=192; {timed}), {kind} {peak:.2f} GiB"
    )
    if precision == "fp32":
        ctx.fp32_rates = rates
        return Check(name, PASS, figure, values)
    if ctx.fp32_rates is None:
        return Check(name, FAIL, figure + "; no fp32 step to compare its rate terms with", values)
    worst = max(abs(rates[k] - ctx.fp32_rates[k]) / max(abs(ctx.fp32_rates[k]), 1e-12) for k in RATE_KEYS)
    values["max_rate_rel_diff"] = worst
    ok = worst <= AMP_RATE_TOLERANCE
    figure += f"; rate terms within {worst:.2%} of fp32's (limit {AMP_RATE_TOLERANCE:.0%})"
    return Check(name, PASS if ok else FAIL, figure, values)


# -- collectives, Ray, the loader --------------------------------------------------------------------------------


def check_all_reduce(ctx: DoctorContext, tmp: Path) -> Check:
    """A one-process all-reduce through ``torch.distributed`` with the backend a trial uses on this device (NCCL for
    CUDA tensors with gloo for CPU ones on GPUs, gloo on CPUs)."""
    torch = ctx.torch
    import torch.distributed as dist

    from pipeline.training.ddp import backends_by_device, collective_backend

    use_gpu = ctx.device.type == "cuda"
    backend = collective_backend(use_gpu)
    name = f"all-reduce ({backend})"
    if not ctx.cuda_ok:
        return Check(name, SKIP, "needs CUDA (see the torch line)")
    if not dist.is_available():
        return Check(name, FAIL, "this torch was built without torch.distributed")
    if dist.is_initialized():
        return Check(name, SKIP, "a process group already exists in this process")
    store = dist.FileStore(str(tmp / "doctor-store"), 1)
    kwargs = {"device_id": ctx.device} if use_gpu else {}
    dist.init_process_group(backend=backend, store=store, rank=0, world_size=1, **kwargs)
    try:
        figures, values = [], {}
        for dev_type, dev_backend in backends_by_device(backend).items():
            if dev_type == "cuda" and not use_gpu:
                continue  # gloo also serves CUDA tensors, but a CPU trial has none
            dev = ctx.device if dev_type == "cuda" else torch.device("cpu")
            t = torch.arange(1 << 20, dtype=torch.float32, device=dev)
            dist.all_reduce(t)  # warm-up (NCCL builds its communicator here)
            ctx.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                dist.all_reduce(t)
            ctx.synchronize()
            ms = (time.perf_counter() - t0) / 10 * 1000
            if not torch.equal(t.cpu(), torch.arange(1 << 20, dtype=torch.float32)):
                return Check(name, FAIL, f"{dev_backend} on {dev_type}: the all-reduced tensor changed", values)
            values[f"{dev_type}_ms"] = round(ms, 3)
            figures.append(f"{dev_backend} on {dev_type} tensors: {ms:.2f} ms per 4 MB")
        return Check(name, PASS, "1 process; " + "; ".join(figures), values)
    finally:
        dist.destroy_process_group()


def _worker_view() -> dict[str, Any]:
    """What a Ray worker given one GPU (or one CPU) sees: its torch and CUDA devices."""
    import os as _os

    import torch

    return {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "visible": _os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def check_ray_cluster(ctx: DoctorContext, address: str | None, timeout_s: float = 60.0) -> Check:
    """Join the Ray cluster at ``address`` and read its CPUs and GPUs; one task given a GPU (where the cluster has
    GPUs, or ``--device cuda`` asks for them) or a CPU reports the torch and CUDA it sees."""
    name = "ray cluster"
    if not ctx.available.get("ray", False):
        return Check(name, SKIP, f"ray is not installed: {INSTALL_HINT['ray']}")
    if not address:
        return Check(name, SKIP, "no --address given (e.g. --address HOST:6379, or RAY_ADDRESS)")
    import ray

    from pipeline.infra.ray_runtime import init_ray

    started = not ray.is_initialized()
    init_ray(address)
    try:
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        values: dict[str, Any] = {"cpus": cpus, "gpus": gpus}
        if ctx.device.type == "cuda" and gpus < 1:
            return Check(name, FAIL, f"Ray sees {cpus:g} CPUs and no GPU: start the GPU nodes with their GPUs", values)
        on_gpu = gpus >= 1
        task = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=0 if on_gpu else 1)(_worker_view)
        try:
            seen = ray.get(task.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            what = "1 GPU" if on_gpu else "1 CPU"
            return Check(
                name, FAIL, f"a task asking for {what} did not run within {timeout_s:.0f} s (all busy?)", values
            )
        values["worker"] = seen
        figure = f"{cpus:g} CPUs, {gpus:g} GPUs; a task's torch {seen['torch']}"
        if on_gpu:
            figure += f", its GPU: {seen['gpu'] or 'none'} (CUDA_VISIBLE_DEVICES={seen['visible']})"
            if not seen["cuda"]:
                return Check(name, FAIL, figure + ": the task given a GPU cannot use CUDA", values)
        return Check(name, PASS, figure, values)
    finally:
        if started:
            ray.shutdown()


def check_loader(ctx: DoctorContext, shards: str | None) -> Check:
    """Samples/s of the shard reader (one process, as ``bench train`` measures it) against what the step consumes."""
    name = "loader vs step"
    if not shards:
        return Check(name, SKIP, "no --shards given (a folder that `dvcm-pipeline prepare` wrote)")
    if not ctx.available.get("webdataset", False):
        return Check(name, SKIP, f"webdataset is not installed: {INSTALL_HINT['webdataset']}")
    if ctx.step_samples_per_s is None:
        return Check(name, SKIP, "no training step was measured (see the train step lines)")
    from pipeline.bench.train import _loader_samples_per_s
    from pipeline.data.shards import check_frames_fit
    from pipeline.training.settings import PRESETS

    w = ctx.workload
    check_frames_fit(shards, w.crop, w.batch)
    rate = _loader_samples_per_s(shards, w.crop, w.batch, max(3 * w.steps, 5))
    need = ctx.step_samples_per_s / rate
    workers = int(PRESETS["paper"]["loader_workers"])
    values = {"loader_samples_per_s": round(rate, 3), "step_samples_per_s": round(ctx.step_samples_per_s, 3)}
    figure = (
        f"loader {rate:.1f} samples/s in 1 process, the step consumes {ctx.step_samples_per_s:.1f} ({1 / need:.1f}x)"
    )
    if need <= 1:
        return Check(name, PASS, figure, values)
    processes = math.ceil(need)
    if processes <= workers:
        return Check(
            name, PASS, f"{figure}: needs {processes} loader processes (the paper preset has {workers})", values
        )
    return Check(
        name,
        FAIL,
        f"{figure}: the step would wait for data; needs {processes} loader processes per training worker "
        f"(--loader-workers {processes}) or faster storage",
        values,
    )


# -- the whole check ---------------------------------------------------------------------------------------------


def machine_line(device: str) -> str:
    """What the figures depend on: the device, the cores and how busy they are."""
    cores = os.cpu_count() or 1
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"device {device}; {cores} CPU cores{load}"


def resolve_device(device: str | None) -> str:
    """``cuda`` or ``cpu``; None picks cuda where torch sees a GPU. Anything else is refused in one line."""
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise UserError(f"--device {device!r} is not a device the doctor checks; choose cuda or cpu")
    return device


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; whatever it raises is a FAIL line with the error's one-line message, never a traceback."""
    t0 = time.perf_counter()
    try:
        check = fn()
    except Exception as exc:  # noqa: BLE001 - the doctor reports every failure as a line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        check = Check(name, FAIL, f"{type(exc).__name__}: {message}"[:300])
    check.seconds = time.perf_counter() - t0
    return check


def run_doctor(
    device: str | None = None,
    address: str | None = None,
    shards: str | None = None,
    available: Mapping[str, bool] | None = None,
    report: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Every check, in order, each passed to ``report`` as soon as it is done; returns them all.

    ``available`` says which optional packages (``ray``, ``mlflow``, ``webdataset``) to treat as installed (default:
    what is installed); a package marked absent is a SKIP, as on a machine without it.
    """
    device = resolve_device(device)
    avail = {**availability(), **(available or {})}
    ctx = DoctorContext(device, avail)
    ranges = declared_ranges()
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="dvcm-doctor-") as tmp_name:
        tmp = Path(tmp_name)
        plan: list[tuple[str, Callable[[], Check]]] = [
            ("torch", lambda: check_torch(ctx, ranges)),
            (
                "bf16",
                lambda: check_bf16(ctx) if ctx.cuda_ok else Check("bf16", SKIP, "needs CUDA (see the torch line)"),
            ),
            ("compressai", lambda: check_package("compressai", True, avail, ranges)),
            ("zoo checkpoint", check_zoo),
            *((pkg, lambda pkg=pkg: check_package(pkg, False, avail, ranges)) for pkg in ("ray", "mlflow")),
            (f"codec {device} -> cpu", lambda: check_codec(ctx, "device", tmp)),
            (f"codec cpu -> {device}", lambda: check_codec(ctx, "cpu", tmp)),
            ("train step fp32", lambda: check_step(ctx, "fp32")),
            ("train step amp", lambda: check_step(ctx, "amp")),
            ("all-reduce", lambda: check_all_reduce(ctx, tmp)),
            ("ray cluster", lambda: check_ray_cluster(ctx, address)),
            ("loader vs step", lambda: check_loader(ctx, shards)),
        ]
        for name, fn in plan:
            check = _guarded(name, fn)
            checks.append(check)
            if report is not None:
                report(check)
    return checks


def doctor_table(checks: list[Check], device: str, seconds: float) -> dict[str, Any]:
    """The JSON form of a run (schema ``dvcm-doctor/1``)."""
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, FAIL, SKIP)}
    return {
        "schema": SCHEMA,
        "device": device,
        "seconds": round(seconds, 2),
        "counts": counts,
        "exit_code": 1 if counts[FAIL] else 0,
        "python": sys.version.split()[0],
        "machine": machine_line(device),
        "checks": [c.as_json() for c in checks],
    }

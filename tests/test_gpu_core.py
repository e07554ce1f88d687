"""The GPU tests of the first tier: they need only torch, compressai and pytest (``pytest -m gpu`` on a bare GPU
box). Every test here is marked ``gpu`` and is skipped, and shown as skipped, where CUDA does not exist.

Nothing here imports Ray, MLflow, WebDataset or typer (``tests/test_doctor.py`` checks that this module collects
without them); the doctor runs through its library function, not the CLI. The tests that need those packages, a
local Ray or shards are in ``tests/test_gpu.py``.

What each shows on a GPU machine:
- encode on the GPU, decode on the CPU (and the reverse) gives the same latent symbols: the scale indexes come
  from the float64 hyper-synthesis on both sides;
- one training step of proposed at N = 192 in fp32 and under AMP (bf16 transforms, fp32 entropy models) through
  the step that training runs, with AMP's rate terms within 1 % of fp32's;
- ``dvcm-pipeline doctor --device cuda`` passes (every check PASS or SKIP).
"""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.bench.doctor import FAIL, PASS, DoctorContext, check_step, run_doctor

# Decided before any fixture is set up (the conftest's own skip comes after the session fixtures, e.g. YOLOv3).
NO_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (a GPU); run `pytest -m gpu` on a GPU machine"
)
pytestmark = [pytest.mark.gpu, NO_CUDA]


def _tiny_codec(yolo):  # noqa: ANN001, ANN202
    from dvcm.registry import build

    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=dict(yolo.provenance), N=32, M1=16, M2=32, H=2)
    model.update(force=True)
    return model.eval()


def test_encode_on_gpu_decode_on_cpu_and_back_gives_the_same_symbols(yolo) -> None:  # noqa: ANN001
    from dvcm import bitstream
    from pipeline.data.sample_data import sample_image

    cpu = _tiny_codec(yolo)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.from_numpy(sample_image(seed=3, size=(320, 200))).permute(2, 0, 1)[None].float() / 255
    for enc, data in (("gpu", bitstream.compress(gpu, x.cuda())), ("cpu", bitstream.compress(cpu, x))):
        header, base = bitstream._base_strings(data, cpu)
        y_cpu = cpu.decompress_base(base, header.hw, header.padded_hw)["y1_hat"]
        y_gpu = gpu.decompress_base(base, header.hw, header.padded_hw)["y1_hat"]
        assert torch.equal(y_cpu, y_gpu.cpu()), f"encoded on {enc}: the decoders disagree on ŷ1"
        x_cpu, x_gpu = bitstream.decode(cpu, data), bitstream.decode(gpu, data)
        assert torch.allclose(x_cpu, x_gpu.cpu(), atol=1e-3)


def test_training_step_in_fp32_and_amp_on_the_gpu() -> None:
    ctx = DoctorContext("cuda", {})
    fp32 = check_step(ctx, "fp32")
    assert fp32.status == PASS, fp32.figure
    amp = check_step(ctx, "amp")
    assert amp.status == PASS, amp.figure  # PASS means its rate terms are within 1 % of fp32's
    assert amp.values["max_rate_rel_diff"] <= 0.01
    assert fp32.values["peak_memory_kind"] == "GPU peak allocated" and amp.values["peak_memory_gib"] > 0


def test_doctor_on_cuda_passes() -> None:
    checks = run_doctor("cuda")
    failed = [c.line() for c in checks if c.status == FAIL]
    assert not failed, "\n".join(failed)
    names = {c.name: c.status for c in checks}
    assert (
        names["torch"] == PASS and names["train step amp"] == PASS and names["all-reduce (cpu:gloo,cuda:nccl)"] == PASS
    )
    assert sum(n.startswith("codec ") and s == PASS for n, s in names.items()) == 2

"""``train.precision: auto``: bf16 autocast on a CPU with bf16 instructions, float32 on
one without, and a bf16 CPU run that learns and exports float32 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import liandan.engine.trainer as trainer_module
from conftest import FAST_CLS, learned, make_imagefolder
from liandan import api
from liandan.config import Config
from liandan.engine.trainer import build_trainer, cpu_bf16_native, resolve_precision
from liandan.evaluation import evaluate

# two cores of /proc/cpuinfo, cut down to the lines that matter
CPUINFO = """processor\t: {n}
vendor_id\t: {vendor}
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw {extra}
"""


def cpuinfo(tmp_path: Path, extra: str, vendor: str = "AuthenticAMD") -> Path:
    path = tmp_path / f"cpuinfo-{len(list(tmp_path.iterdir()))}"
    path.write_text("\n".join(CPUINFO.format(n=n, vendor=vendor, extra=extra) for n in (0, 1)))
    return path


@pytest.mark.parametrize(
    ("extra", "native"),
    [
        ("avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
        ("amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
        ("avx512_vnni", False),  # AVX-512 without bf16: oneDNN would emulate it
        ("", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, extra: str, native: bool) -> None:
    assert cpu_bf16_native(cpuinfo(tmp_path, extra)) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path: Path) -> None:
    assert cpu_bf16_native(tmp_path / "missing") is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_follows_the_cpu(
    native: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda: native)
    auto = Config.load(None, ["train.accelerator=auto"])
    assert resolve_precision(auto) == ("bf16-mixed" if native else "32")
    assert resolve_precision(Config.load(None, ["train.accelerator=cpu"])) == resolve_precision(
        auto
    )
    trainer, _ = build_trainer(auto, tmp_path)  # what the Trainer of such a run uses
    assert trainer.precision == ("bf16-mixed" if native else "32-true")
    # a setting of yours wins either way
    assert resolve_precision(Config.load(None, ["train.precision=32"])) == "32"
    assert resolve_precision(Config.load(None, ["train.precision=bf16-mixed"])) == "bf16-mixed"


def test_auto_precision_on_a_gpu_ignores_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda: True)
    assert resolve_precision(Config.load(None, [])) == "16-mixed"  # the GPU's, not the CPU's
    cpu = Config.load(None, ["train.accelerator=cpu"])
    assert resolve_precision(cpu) == "bf16-mixed"  # training on the CPU: the CPU's


def test_a_bf16_run_on_the_cpu_learns_and_exports_float32_weights(tmp_path: Path) -> None:
    """bf16 autocast on the CPU (emulated where the CPU lacks the instructions): the
    run beats chance on new images and its exported weights are float32, like a float32
    run's."""
    data = make_imagefolder(tmp_path / "cls")
    fresh = make_imagefolder(tmp_path / "cls-fresh", n_per_class=10, seed=99)
    overrides = [*FAST_CLS, "train.precision=bf16-mixed", "train.accelerator=cpu"]
    result = api.train(data, overrides=overrides, out=tmp_path, name="bf16", plan=False)
    weights = load_file(result.run_dir / "model" / "weights.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    metrics = evaluate(result.run_dir, fresh, split="all", write=False)
    assert learned(metrics), metrics["overall"]

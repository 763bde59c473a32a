"""bf16 on the CPU's matrix units: `auto` picks it where the units are, falls back to fp32 elsewhere, and the
choice is part of a run (its settings, key and provenance)."""

from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from flower_pipeline import training
from flower_pipeline.study import load_study, run_key
from flower_pipeline.training import TrainConfig, Trainer, cpu_bf16_units, precision_for, provenance, train

TINY = tiny_config(iterations=12, batch_size=4, minibatch_kernels=8, log_every=4, sample_every=6)


@pytest.fixture
def amx_cpu(monkeypatch):
    """A CPU with AMX and AVX512-BF16 as torch reports it, whatever this machine has."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def test_auto_is_bf16_on_bf16_units_and_fp32_without_them_or_under_avx2_kernels(amx_cpu, monkeypatch):
    assert cpu_bf16_units() == "AMX" and precision_for("auto", "cpu") == "bf16"
    assert precision_for("auto", "cuda") == "fp32" and precision_for("fp32", "cpu") == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # oneDNN capped below AMX
    assert cpu_bf16_units() == "AVX512-BF16" and precision_for("auto", "cpu") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # emulation: bf16 would run on AVX2, slower than fp32
    assert cpu_bf16_units() == "" and precision_for("auto", "cpu") == "fp32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert precision_for("auto", "cpu") == "fp32" and precision_for("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # a CPU without the units
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert cpu_bf16_units() == "" and precision_for("auto", "cpu") == "fp32"


def test_this_machines_choice_matches_its_units():
    """No monkeypatching: what this CPU really offers decides (an AVX2 CPU trains in fp32)."""
    assert precision_for("auto", "cpu") == ("bf16" if cpu_bf16_units() else "fp32")
    assert TrainConfig().on("cpu").precision == precision_for("auto", "cpu")


def test_a_bf16_run_is_another_run_with_its_precision_in_its_key_and_provenance(amx_cpu):
    run = load_study("source").plan("quick")[0]
    on_amx = run_key(run, "cache", "code", device="cpu")
    assert on_amx != run_key(replace(run, config={**run.config, "precision": "fp32"}), "cache", "code", device="cpu")
    assert on_amx == run_key(replace(run, config={**run.config, "precision": "bf16"}), "cache", "code", device="cpu")
    assert provenance("cpu", precision="bf16")["precision"] == "bf16"
    assert provenance("cpu")["cpu_bf16_units"] == "AMX"


def test_bf16_training_keeps_weights_losses_and_optimizer_state_in_fp32_and_is_deterministic(small_cache, tmp_path):
    config = replace(TINY, precision="bf16")  # explicit: on a CPU without the units it is emulated, slower
    trainer = Trainer(config, small_cache.train_images(), torch.device("cpu"))
    assert trainer.precision == "bf16" and trainer.memory_format == torch.channels_last
    trainer.run_step()
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())
    assert all(v.dtype == torch.float32 for s in trainer.opt_d.state.values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point())
    assert trainer.stats.dtype == torch.float32
    first, again = (train(config, small_cache, tmp_path / name, device="cpu") for name in ("first", "again"))
    fp32 = train(replace(TINY, precision="fp32"), small_cache, tmp_path / "fp32", device="cpu")
    assert first.history[-1]["loss_d"] == again.history[-1]["loss_d"] != fp32.history[-1]["loss_d"]
    assert training.load_trained(tmp_path / "first").config.precision == "bf16"

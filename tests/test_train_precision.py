"""bf16 training on a CPU: which CPUs have it natively, the refusal elsewhere, and a real bf16 run."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from longalign.train import TrainConfig, model_setup  # noqa: E402
from longalign.train.model_setup import cpu_bf16_support, resolve_precision  # noqa: E402

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
ICELAKE = "flags\t\t: fpu avx2 avx512f avx512_vnni\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_bf16_support(ZEN4) == "avx512_bf16"
    assert cpu_bf16_support(SAPPHIRE) == "amx_bf16"
    assert cpu_bf16_support(ICELAKE) is None
    assert cpu_bf16_support("Features\t: fp asimd bf16\n") is None  # Arm's bf16 is not what torch's CPU kernels use


def test_bf16_on_a_cpu_without_it_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model_setup, "cpu_bf16_support", lambda cpuinfo=None: None)
    with pytest.raises(ValueError, match="no native bf16 instructions.*use --precision fp32"):
        resolve_precision(TrainConfig(precision="bf16"))
    assert resolve_precision(TrainConfig(precision="auto")) == "fp32"  # bf16 on a CPU is asked for by name
    monkeypatch.setattr(model_setup, "cpu_bf16_support", lambda cpuinfo=None: "avx512_bf16")
    assert resolve_precision(TrainConfig(precision="bf16")) == "bf16"
    assert resolve_precision(TrainConfig(precision="auto")) == "fp32"


@pytest.mark.skipif(torch.cuda.is_available() or cpu_bf16_support() is None, reason="needs a CPU with native bf16")
def test_a_cpu_bf16_run_trains_under_autocast_close_to_fp32(tmp_path):
    from test_train import cfg_for, make_tokens

    from longalign.train import train

    make_tokens(tmp_path / "tokens")
    seen = []
    orig = model_setup.install_loss_head

    def spy(model):
        head = orig(model)
        head.register_forward_pre_hook(lambda m, a: seen.append(torch.is_autocast_enabled("cpu")))
        return head

    results = {}
    for precision in ("fp32", "bf16"):
        model_setup.install_loss_head = spy
        try:
            results[precision] = train(cfg_for(tmp_path, precision, max_steps=2, precision=precision))
        finally:
            model_setup.install_loss_head = orig
    meta = json.loads((tmp_path / "bf16" / "run_meta.json").read_text())
    assert meta["precision"] == "bf16"
    assert True in seen and False in seen  # autocast on for the bf16 run only
    a, b = results["fp32"].final_loss, results["bf16"].final_loss
    assert abs(a - b) <= 0.03 * abs(a)

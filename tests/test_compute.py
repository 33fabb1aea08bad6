"""precision: bf16 autocast and channels_last must speed things up without changing what is learnt or saved."""

from pathlib import Path

import pytest
import torch

from rnp import compute as compute_module
from rnp.compute import Compute, emulated_bf16_note, resolve_compute
from rnp.config import AugmentParams, RecoverParams
from rnp.data import DeviceData, ImageSet
from rnp.defense import recover
from rnp.io import load_tensors
from rnp.models import ModelSpec, create_model, load_model, model_bytes
from rnp.stages import prune, unlearn
from rnp.stages import recover as recover_stage
from rnp.training import run_epoch, seeded_generator

from .conftest import make_config

BF16 = Compute(torch.device("cpu"), bf16=True, channels_last=True)
SPEC = ModelSpec("resnet18", 10, (3, 16, 16), (0.5,) * 3, (0.25,) * 3)


def test_precision_resolution_on_cpu():
    assert resolve_compute("cpu", "fp32") == Compute(torch.device("cpu"))
    assert resolve_compute("cpu", "auto") == Compute(torch.device("cpu"))  # CPU results stay fp32 unless asked
    assert resolve_compute("cpu", "bf16") == BF16


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_on_a_cpu_that_emulates_it_gets_a_note_and_nothing_else_does(monkeypatch, capsys, native):
    """Without AVX512-BF16 or AMX, bf16 is emulated: 6-8x slower than fp32 on an AVX2 EPYC (docs/speed.md)."""
    from rnp.stages._runtime import resolve_compute as stage_resolve_compute

    monkeypatch.setattr(compute_module, "native_cpu_bf16", lambda: native)
    assert emulated_bf16_note(Compute(torch.device("cpu"))) is None  # fp32: nothing to say
    assert emulated_bf16_note(Compute(torch.device("cuda"), bf16=True)) is None  # a GPU's bf16 is its own check
    note = emulated_bf16_note(BF16)
    assert (note is not None) == (native is False)  # unknown (e.g. ARM): no claim either way
    assert stage_resolve_compute("cpu", "bf16") == BF16  # a note, never a refusal: the results are still right
    out = capsys.readouterr().out
    if native is False:
        assert note.startswith("note: precision bf16 on this CPU") and "emulated" in note and "fp32" in note
        assert out.count(note) == 1
    else:
        assert "emulated" not in out
    stage_resolve_compute("cpu", "fp32")
    assert "emulated" not in capsys.readouterr().out


def test_the_bf16_probe_agrees_with_the_kernels_cpu_flags():
    native = compute_module.native_cpu_bf16()
    cpuinfo = Path("/proc/cpuinfo")
    if native is None or not cpuinfo.exists():
        pytest.skip("not an x86 Linux machine: the probe makes no claim")
    flags = set(next(li for li in cpuinfo.read_text().splitlines() if li.startswith("flags")).split(":", 1)[1].split())
    assert native == bool(flags & {"avx512_bf16", "amx_bf16"})


def _data(n=64, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    images[:, :, :4, :4] = (labels * 25).view(-1, 1, 1, 1).to(torch.uint8)
    return ImageSet(images, labels)


def test_bf16_runs_convolutions_in_bf16_and_keeps_fp32_state(tmp_path):
    torch.manual_seed(0)
    model = BF16.place(create_model(SPEC))
    conv_dtypes = []
    model.conv1.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    data = DeviceData(_data(), SPEC.mean, SPEC.std, BF16)
    x, _ = next(data.batches(8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = run_epoch(model, data, opt, 32, seeded_generator(0), AugmentParams())
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(stats.loss))
    # a channels_last model saves as plain contiguous tensors that load back identically
    (tmp_path / "m.safetensors").write_bytes(model_bytes(model, SPEC))
    loaded, _, _ = load_model(tmp_path / "m.safetensors")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_bf16_masks_close_to_fp32_masks():
    torch.manual_seed(0)
    model = create_model(SPEC)
    fp32 = recover(model, DeviceData(_data(), SPEC.mean, SPEC.std, "cpu"), RecoverParams(epochs=3), AugmentParams(), seeded_generator(0))
    bf16 = recover(BF16.place(model), DeviceData(_data(), SPEC.mean, SPEC.std, BF16), RecoverParams(epochs=3), AugmentParams(), seeded_generator(0))
    a, b = torch.cat(list(fp32.values())), torch.cat(list(bf16.values()))
    assert (a < 1).sum() > 100  # the masks moved
    assert (a - b).abs().mean() < 0.02, (a - b).abs().mean()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


def test_bf16_defense_stages_purify_like_fp32(default_run, tmp_path):
    """unlearn -> recover -> prune with precision bf16 on the default pipeline's backdoored model."""
    cfg32, root, fp32 = default_run
    cfg = make_config(precision="bf16")
    poison, train = root / "poison", root / "train"
    unlearn.run(cfg, poison, train, tmp_path / "unlearn")
    recover_stage.run(cfg, poison, tmp_path / "unlearn", tmp_path / "recover")
    m = prune.run(cfg, poison, train, tmp_path / "recover", tmp_path / "prune")
    assert m["asr"] <= 0.05 and m["ca"] >= fp32["prune"]["ca"] - 0.03, m
    masks, _ = load_tensors(tmp_path / "recover/masks.safetensors")
    masks32, _ = load_tensors(root / "recover/masks.safetensors")
    a, b = torch.cat(list(masks32.values())), torch.cat(list(masks.values()))
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_bad_precision_is_one_line():
    from rnp.errors import RnpError

    with pytest.raises(RnpError, match="precision"):
        make_config(precision="fp16")


def _fit_small_cnn(compile: bool) -> torch.nn.Module:
    from rnp.config import TrainParams
    from rnp.training import fit

    spec = ModelSpec("small_cnn", 10, (3, 16, 16), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = create_model(spec)
    return fit(model, DeviceData(_data(), spec.mean, spec.std, "cpu"), TrainParams(epochs=2, batch_size=32, compile=compile),
               AugmentParams(), seeded_generator(0))


def test_train_compile_falls_back_to_eager_when_compiling_fails(monkeypatch):
    class CompileFailed(torch._dynamo.exc.TorchDynamoException):
        pass

    def broken_compile(model, **kwargs):
        def run(x):
            raise CompileFailed("no C++ compiler found")
        return run

    eager = _fit_small_cnn(compile=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed, training eagerly: no C\\+\\+ compiler found"):
        fallback = _fit_small_cnn(compile=True)
    for (k, a), b in zip(eager.state_dict().items(), fallback.state_dict().values()):
        assert torch.equal(a, b), k  # the failed first call trained nothing twice and skipped no step

    def unsupported(model, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.warns(UserWarning, match="Dynamo is not supported"):
        refused = _fit_small_cnn(compile=True)
    assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(), refused.state_dict().values()))


def test_train_compile_learns_what_eager_learns(recwarn):
    """The compiled forward trains the model's own parameters, to float tolerance of eager."""
    eager, compiled = _fit_small_cnn(compile=False), _fit_small_cnn(compile=True)
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]  # it really compiled
    assert not any(k.startswith("_orig_mod") for k in compiled.state_dict())  # saving sees the plain module
    for (k, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-3), k


def test_compile_benchmark_runs_on_a_tiny_model(capsys):
    from benchmarks.compile_step import main as compile_step

    r = compile_step(["--arch", "small_cnn", "--batch", "8", "--size", "8", "--steps", "1"])
    assert r["eager_step"] > 0 and r["compiled_step"] > 0 and r["compile_first"] > 0
    assert "compiling pays off after" in capsys.readouterr().out

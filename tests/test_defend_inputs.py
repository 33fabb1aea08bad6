"""The files users really have, at `rnp defend`: images in every mode Pillow reads, class orders, training checkpoints,
an output that would overwrite an input, a verdict a script can act on, and a clean stop."""

import io
import json
import os
import re
import signal

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from rnp.cli import main
from rnp.errors import RnpError
from rnp.images import class_order, read_image
from rnp.models import load_model

from .conftest import default_params, train_elsewhere

MODES = ["L", "RGB", "RGBA", "LA", "P", "P-transparent", "CMYK", "1", "I;16", "F"]


def _image(mode: str, w: int, h: int, seed: int, orientation: int) -> bytes:
    """An image of `mode` as file bytes (PNG; JPEG for CMYK, TIFF for float), with an EXIF orientation tag."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.random((h, w), dtype=np.float32))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if mode == "P-transparent":
            img = img.convert("P")
            img.info["transparency"] = 0
        else:
            img = img.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    if mode == "F":  # only TIFF holds float pixels; Pillow applies a TIFF's own orientation tag inconsistently, so none here
        img.save(buf, format="TIFF")
    elif mode == "CMYK":  # CMYK photos are JPEGs (print workflows), with EXIF like any photo
        img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    else:
        img.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def _reference(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Pillow's own conversions; 16-bit and float pixels scaled to 8 bits (Pillow's convert would clip them)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I"):
        img = Image.fromarray(((np.asarray(img).astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.rint(np.asarray(img, dtype=np.float64) * 255).clip(0, 255).astype(np.uint8))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img).reshape(size, size, channels)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), w=st.integers(1, 9), h=st.integers(1, 9), size=st.integers(1, 10), channels=st.sampled_from([1, 3]),
       orientation=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_every_image_mode_loads_as_pillows_own_conversion_upright(tmp_path, mode, w, h, size, channels, orientation, seed):
    data = _image(mode, w, h, seed, orientation)
    path = tmp_path / "x.img"
    path.write_bytes(data)
    got = read_image(path, size, channels)
    assert got.dtype == np.uint8 and got.shape == (size, size, channels)
    with Image.open(path) as img:  # the same file, decoded by Pillow and converted by its own tools
        assert np.array_equal(got, _reference(img, size, channels))


def test_a_16_bit_image_is_scaled_not_clipped_and_exif_orientation_is_applied(tmp_path):
    wide = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "deep.png", 4, 1)[0, :, 0].tolist() == [0, 1, 128, 255]  # convert("L") gives 0, 255, 255, 255
    tall = np.zeros((4, 2, 3), np.uint8)
    tall[0, 0] = 255  # a white top-left pixel
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    Image.fromarray(tall).save(tmp_path / "photo.png", exif=exif.tobytes())
    upright = read_image(tmp_path / "photo.png", 4, 3)  # resized to 4x4 after the turn: the white corner is now top-right
    assert upright[0, -1].tolist() == [255, 255, 255] and upright[0, 0].tolist() != [255, 255, 255]


def test_class_order_is_given_read_from_classes_txt_numerical_or_by_name(tmp_path):
    assert class_order(["10", "2", "1"], None, None) == (["1", "2", "10"], "numerical (every folder name is a number)")
    assert class_order(["trouser", "tshirt"], None, None)[0] == ["trouser", "tshirt"]
    assert class_order(["trouser", "tshirt"], ["tshirt", "trouser"], None) == (["tshirt", "trouser"], "as given (--classes)")
    (tmp_path / "classes.txt").write_text("tshirt\ntrouser\n")
    assert class_order(["trouser", "tshirt"], None, tmp_path / "classes.txt")[0] == ["tshirt", "trouser"]
    with pytest.raises(RnpError, match=r"does not match the class folders \(folders not in it: trouser; in it but no folder: pants\)"):
        class_order(["trouser", "tshirt"], ["tshirt", "pants"], None)
    with pytest.raises(RnpError, match="names a class twice"):
        class_order(["a", "b"], ["a", "a", "b"], None)


def _digits_folder(default_run, root, names):
    """The default run's 300 clean digits as a folder of grey PNGs, class k in folder names[k]."""
    from rnp.datafiles import load_imageset

    _, root_dir, _ = default_run
    for part in ("defense", "holdout"):
        images, _, _ = load_imageset(root_dir / "poison" / f"{part}.safetensors")
        for i, (x, y) in enumerate(zip(images.images, images.labels)):
            (root / names[int(y)]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[0].numpy()).save(root / names[int(y)] / f"{part}{i}.png")


def _fast_params(tmp_path, **sections):
    params = default_params()
    for section, values in sections.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return str(tmp_path / "params.yaml")


def test_a_lightning_checkpoint_and_a_grey_folder_with_its_class_order_are_defended(default_run, tmp_path, capsys):
    cfg, root, _ = default_run
    model, _, _ = load_model(root / "train/model.safetensors")
    ckpt = tmp_path / "epoch=29-step=120.ckpt"  # PyTorch Lightning's layout: weights under state_dict, each key prefixed model.
    torch.save({"epoch": 29, "global_step": 120, "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.05},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "optimizer_states": []}, ckpt)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]  # sorted by name, the order is wrong
    _digits_folder(default_run, tmp_path / "clean", names)
    (tmp_path / "clean" / "classes.txt").write_text("\n".join(names))
    out = tmp_path / "out" / "p.safetensors"
    args = ["defend", "--model", str(ckpt), "--arch", "small_cnn", "--data", str(tmp_path / "clean"), "--image-size", "8", "--out", str(out)]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "out/p.report.json").read_text())
    assert report["images"]["classes"] == names and report["images"]["class_order"].startswith("from ")
    assert report["images"]["channels"] == 1 and report["images"]["count"] == 300 and 0 < report["images"]["mean"][0] < 1
    assert report["exit_code"] == 0 and report["backdoor_suspected"] and report["clean_acc"] > 0.9
    assert "classes in label order (from " in captured.out and "wrote p.safetensors, p.masks.safetensors" in captured.out
    assert "clean accuracy" in captured.out and "(exit 0)" in captured.out


def test_nothing_pruned_is_a_verdict_of_its_own_and_the_unchanged_model_is_not_written(default_run, tmp_path, capsys):
    _, root, _ = default_run
    out = tmp_path / "out" / "p.safetensors"
    base = ["defend", "--model", str(root / "train/model.safetensors"), "--arch", "small_cnn", "--data", "digits", "--image-size", "8",
            "--defense-size", "300", "--out", str(out)]
    # suspected, but the sweep may prune no channel at all: nothing is pruned
    assert main([*base, "--params", _fast_params(tmp_path, prune={"sweep": "number", "max_number": 0})]) == 4
    report = json.loads((tmp_path / "out/p.report.json").read_text())
    assert report["backdoor_suspected"] and report["pruned"] == 0 and report["exit_code"] == 4 and not out.exists()
    assert "BACKDOOR SUSPECTED, NOT REMOVED" in capsys.readouterr().out
    out.parent.joinpath("p.safetensors").write_bytes(b"an earlier run's purified model")
    # a model unlearning cannot collapse in one epoch at a tiny rate: no evidence; the earlier file goes, not left to contradict it
    assert main([*base, "--params", _fast_params(tmp_path, unlearn={"max_epochs": 1, "lr": 1e-6})]) == 3
    report = json.loads((tmp_path / "out/p.report.json").read_text())
    assert not report["backdoor_suspected"] and report["exit_code"] == 3 and not out.exists()
    assert "model unchanged (no evidence of a backdoor), not written" in capsys.readouterr().out


def test_an_output_that_is_an_input_by_any_spelling_is_refused_before_work(default_run, tmp_path, capsys):
    _, root, _ = default_run
    model = tmp_path / "model.safetensors"
    model.write_bytes((root / "train/model.safetensors").read_bytes())
    before = model.read_bytes()
    (tmp_path / "link").symlink_to(tmp_path)
    _digits_folder(default_run, tmp_path / "clean", [str(k) for k in range(10)])
    for out, what in ((tmp_path / "link" / "." / "model.safetensors", "over the input"),
                      (tmp_path / "clean" / "p.safetensors", "inside the input")):
        args = ["defend", "--model", str(model), "--arch", "small_cnn", "--data", str(tmp_path / "clean"), "--image-size", "8", "--out", str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert what in err and len(err.splitlines()) == 1
    assert model.read_bytes() == before and not (tmp_path / "clean" / "p.safetensors").exists()


@pytest.mark.parametrize("signum,code,said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_mid_write_is_one_line_and_leaves_nothing_half_written(default_run, tmp_path, capsys, monkeypatch, signum, code, said):
    import rnp.stages.defend as stage

    _, root, _ = default_run

    def stop(report):  # the signal arrives while the output files are being written: the model's is already in a temp file
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal should have stopped the run")

    monkeypatch.setattr(stage, "_curve_png", stop)
    out = tmp_path / "out" / "p.safetensors"
    assert main(["defend", "--model", str(root / "train/model.safetensors"), "--arch", "small_cnn", "--data", "digits", "--image-size", "8",
                 "--defense-size", "300", "--out", str(out)]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err
    assert list((tmp_path / "out").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.fixture(scope="module")
def timm_model_file(tmp_path_factory):
    """A backdoored timm ResNet trained outside rnp, saved as timm's own plain state dict (.pth)."""
    net, ds = train_elsewhere("timm:resnet10t", 4)
    path = tmp_path_factory.mktemp("timm") / "resnet10t.pth"
    torch.save(net.state_dict(), path)
    return path, ds


def test_a_timm_model_is_defended_through_the_command_and_exported_to_onnx_that_onnxruntime_agrees_with(timm_model_file, tmp_path, capsys):
    import onnxruntime as ort

    path, ds = timm_model_file
    out = tmp_path / "out" / "p.safetensors"
    args = ["defend", "--model", str(path), "--arch", "timm:resnet10t", "--data", "digits", "--defense-size", "300", "--image-size", "8",
            "--out", str(out), "--export", "onnx", "--force"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    report = json.loads((tmp_path / "out/p.report.json").read_text())
    assert report["mask_on"] == "bn" and report["pruned"] > 0 and report["clean_acc"] > 0.6
    purified, spec, _ = load_model(out)
    assert spec.arch == "timm:resnet10t"
    plain = torch.load(tmp_path / "out/p.pt", weights_only=True)  # the input's format: a plain state dict
    assert plain.keys() == purified.state_dict().keys() and all(torch.equal(plain[k], v) for k, v in purified.state_dict().items())
    x = torch.randn(5, 1, 8, 8)
    session = ort.InferenceSession(str(tmp_path / "out/p.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), purified.eval()(x), atol=1e-4)
    assert "p.onnx" in captured.out


def test_a_timm_name_that_does_not_exist_and_a_model_onnx_cannot_express_are_one_line_before_any_work(timm_model_file, tmp_path, capsys,
                                                                                                     monkeypatch):
    path, _ = timm_model_file
    out = tmp_path / "out" / "p.safetensors"
    base = ["defend", "--model", str(path), "--data", "digits", "--image-size", "8", "--out", str(out)]
    assert main([*base, "--arch", "timm:resnet10q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown timm model 'resnet10q'" in err and len(err.splitlines()) == 1

    def cannot(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", cannot)
    assert main([*base, "--arch", "timm:resnet10t", "--export", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--export onnx: the model cannot be expressed in ONNX (RuntimeError: Exporting the operator 'aten::fancy' "
                        "to ONNX opset version 17 is not supported)") and len(err.splitlines()) == 1
    assert not out.parent.exists()


def test_a_file_with_another_librarys_keys_names_the_architecture_they_fit(tmp_path, capsys):
    from rnp.models import ModelSpec, create_model

    path = tmp_path / "resnet18.pth"  # timm's ResNet-18 for grey images, given as rnp's own resnet18
    torch.save(create_model(ModelSpec("timm:resnet18", 10, (1, 8, 8), (0.5,), (0.2,))).state_dict(), path)
    assert main(["defend", "--model", str(path), "--arch", "resnet18", "--data", "digits", "--image-size", "8",
                 "--out", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "weights do not match --arch resnet18" in err and len(err.splitlines()) == 1
    assert err.endswith("its keys fit --arch timm:resnet18"), err  # torchvision's has the same names, but a 3-channel stem


def test_the_self_check_keeps_pruned_channels_dead_and_its_verdict_sets_the_exit_code(default_run):
    from rnp.data import DeviceData, ImageSet
    from rnp.datafiles import load_imageset
    from rnp.defense.detection import Detection
    from rnp.defense.pipeline import backdoor_remains, recheck_step
    from rnp.defense.recover import bn_layers
    from rnp.stages.defend import EXIT_PURIFIED, EXIT_STILL_PRESENT, outcome

    cfg, root, metrics = default_run
    # the default run is purified (ASR 0.9 %): its prune stage ran the self-check, which must not cry wolf
    assert metrics["prune"]["backdoor_remains"] is False and metrics["prune"]["recheck_epochs"] >= 1
    model, _, _ = load_model(root / "prune/model.safetensors")
    dead = {name: (bn.weight == 0) for name, bn in bn_layers(model).items()}
    assert sum(int(d.sum()) for d in dead.values()) == metrics["prune"]["pruned"]
    fit, info, _ = load_imageset(root / "poison/defense.safetensors")
    every = DeviceData(ImageSet(fit.images, fit.labels), info.mean, info.std, torch.device("cpu"))
    probe = recheck_step(model, "bn", every, every, cfg, 10).model
    for name, bn in bn_layers(probe).items():  # unlearning trained every other weight; the pruned ones are still 0
        assert (bn.weight[dead[name]] == 0).all() and (bn.weight[~dead[name]] != 0).all()
    d = lambda target, acc: Detection(target, 0.6, [0.6 if c == target else 0.0 for c in range(10)], acc, start_acc=0.99)  # noqa: E731
    assert backdoor_remains(d(3, 0.1), d(3, 0.1)) is True and backdoor_remains(d(3, 0.1), d(5, 0.1)) is False
    assert backdoor_remains(d(3, 0.1), d(3, 0.9)) is False and backdoor_remains(None, d(3, 0.1)) is None  # no collapse: no sink
    from rnp.defense import DefenseReport

    report = DefenseReport("rnp", "v", 5, 0.2, 1.0, 1.0, 1.0, {"fit": 1, "holdout": 1}, 1.0, "bn", [], [], 0, {})
    assert outcome(report) == EXIT_PURIFIED
    report.extra["backdoor_remains"] = True
    assert outcome(report) == EXIT_STILL_PRESENT


def test_the_api_takes_numpy_arrays_and_names_channels_last_float_pixels_and_a_class_count_the_model_does_not_have():
    from rnp.config import Config
    from rnp.defense import CleanData, DefendOptions, prepare
    from rnp.models import ModelSpec, create_model

    torch.manual_seed(0)
    model = create_model(ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,)))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8), np.arange(60) % 10
    options = DefendOptions(Config(), min_accuracy=0.0)
    prep = prepare(model, CleanData(images, labels, (0.5,), (0.25,), 10), options)  # numpy in, the split out
    assert prep.clean_images == {"fit": 40, "holdout": 20} and prep.every.labels.dtype == torch.long
    cases = [
        (CleanData(images.transpose(0, 2, 3, 1), labels, (0.5,), (0.25,), 10),
         "channels last; rnp takes (N, C, H, W): pass images.permute(0, 3, 1, 2)"),
        (CleanData(images / 255.0, labels, (0.5,), (0.25,), 10),
         "must be uint8 pixels 0..255 (normalised by mean/std inside rnp), got torch.float64"),
        (CleanData(images, labels, (0.5,), (0.25,), 5), "the model outputs (10,) per image, but CleanData.num_classes is 5"),
        (CleanData(images, labels[:10], (0.5,), (0.25,), 10), "CleanData.labels must be 60 integer class indices"),
        (CleanData(images, labels, (0.5, 0.5, 0.5), (0.25,), 10), "CleanData.mean/std need 1 values"),
    ]
    for data, message in cases:
        with pytest.raises(RnpError, match=re.escape(message)):
            prepare(model, data, options)

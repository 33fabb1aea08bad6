"""rnp defend: an untrusted model file + clean data -> purified model, masks, pruning curve (pruning defenses), report."""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from ..config import Config
from ..data import DeviceData
from ..datasets import image_folder, load_dataset
from ..defense import DEFENSES, CleanData, DefendOptions, DefenseReport, defend, mask_layers
from ..defense.base import MIN_ACCURACY
from ..defense.recover import MASK_ON
from ..errors import RnpError
from ..io import StageWriter, csv_bytes, json_bytes, tensors_bytes
from ..metrics import accuracy
from ..models import ModelSpec, model_bytes, timm_normalisation
from ..plots import curve_png
from ..untrusted import first_layer_channels, load_untrusted, read_state_dict
from ._runtime import progress, resolve_compute, say, seed_everything

__all__ = ["run", "clean_data", "outcome", "EXIT_PURIFIED", "EXIT_NO_EVIDENCE", "EXIT_NOT_REMOVED", "EXIT_STILL_PRESENT"]


def clean_data(spec: str, cfg: Config, defense_size: int, image_size: int, channels: int = 3, classes: list[str] | None = None):
    """SPEC -> (defense ImageSet, evaluation ImageSet or None, num_classes, mean, std, class names or None, how ordered).

    A folder is an ImageFolder tree of clean labelled images (all of it is defense data), read as `channels`-channel
    images in the class order `classes` (else its classes.txt, else numerical or by name);
    a name is a registered data set: `defense_size` clean training images, the test split for evaluation.
    """
    path = Path(spec)
    if path.is_dir():
        ds, names, how = image_folder(path, image_size, channels, classes)
        return ds.train, ds.test, ds.num_classes, ds.mean, ds.std, names, how
    if "/" in spec or spec.startswith("."):
        raise RnpError(f"--data {spec}: no such folder")
    if classes is not None:
        raise RnpError(f"--classes orders the class folders of an image folder; data set {spec} has its own order")
    ds = load_dataset(spec, cfg.data.root, image_size)
    train, test = (ds.train, ds.test) if ds.test is not None else ds.train.split(cfg.data.test_fraction, cfg.seed)
    if defense_size > len(train):
        raise RnpError(f"--defense-size {defense_size} is larger than the {len(train)} training images of {spec}")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.data.defense_seed))[:defense_size]
    return train.subset(pick.sort().values), test, ds.num_classes, ds.mean, ds.std, None, f"data set {spec}'s own"


def _floats(text: str | None, what: str, positive: bool = False) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RnpError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise RnpError(f"{what} must be finite{' and > 0' if positive else ''}, got {text!r}")
    return values


def check_arguments(out: Path, defense_size: int, image_size: int) -> None:
    """What can be checked before any work: counts, and that the output folder takes a file."""
    if out.suffix != ".safetensors":
        raise RnpError(f"--out {out} must end in .safetensors")
    if defense_size < 1:
        raise RnpError(f"--defense-size must be >= 1, got {defense_size}")
    if image_size < 1:
        raise RnpError(f"--image-size must be >= 1, got {image_size}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise RnpError(f"--out {out}: {folder} is not a folder")
    try:  # a real file, not os.access: /proc, read-only mounts and full disks say yes to access() and no to writing
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rnp-probe-"):
            pass
    except OSError as e:
        raise RnpError(f"--out {out}: cannot write in {folder} ({e.strerror or e})") from None


def output_paths(out: Path) -> list[Path]:
    stem = out.name[: -len(".safetensors")]
    return [out, *(out.with_name(f"{stem}.{suffix}") for suffix in ("masks.safetensors", "curve.csv", "curve.png", "report.json", "pt", "onnx"))]


def check_outputs_are_not_inputs(out: Path, inputs: list[Path]) -> None:
    """An output that is an input, by any spelling or link (or inside an input folder), is refused: inputs are never changed."""
    for target in output_paths(out):
        resolved = target.resolve()
        for source in inputs:
            same = resolved == source.resolve() or (target.exists() and source.exists() and os.path.samefile(target, source))
            if same or (source.is_dir() and resolved.is_relative_to(source.resolve())):
                raise RnpError(f"--out {out}: would write {target.name} {'over' if same else 'inside'} the input {source}; "
                               f"choose another output path")


def normalisations(data_mean: tuple[float, ...], data_std: tuple[float, ...]) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The normalisations a model is commonly trained with, for images of len(data_mean) channels; the data's own first."""
    c = len(data_mean)
    found = {"the data's own": (data_mean, data_std), "none (0..1)": ((0.0,) * c, (1.0,) * c), "mean 0.5, std 0.5": ((0.5,) * c, (0.5,) * c)}
    if c == 3:
        found["ImageNet's"] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        found["CIFAR-10's"] = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return found


def choose_normalisation(model: torch.nn.Module, clean, data_mean, data_std, min_accuracy: float, arch: str = ""):
    """Without --mean/--std: the data's own statistics (a timm model's: its pretrained config's) if the model is accurate
    with them, else the best common one.

    Returns (mean, std, how): `how` says what was tried, for the report and for a refusal.
    """
    options = normalisations(data_mean, data_std)
    config = timm_normalisation(arch)
    if config is not None and len(config[0]) == len(data_mean):
        options = {"timm's pretrained config": config, **options}
    scores = {name: accuracy(model, DeviceData(clean, m, s, torch.device("cpu"))) for name, (m, s) in options.items()}
    own = next(iter(options))
    best = own if scores[own] >= min_accuracy else max(scores, key=scores.get)
    tried = ", ".join(f"{name} {acc:.0%}" for name, acc in scores.items())
    if best != own and scores[best] >= min_accuracy:
        say(f"defend: the model scores {scores[own]:.0%} with {own} and {scores[best]:.0%} with {best}: "
            f"using {best} (pass --mean/--std to choose)")
    return (*options[best], f"no --mean/--std given; accuracy with {tried}")


# what `rnp defend` tells a script, beside 1 (an internal error) and 2 (bad input); docs/defend.md
EXIT_PURIFIED = 0  # the model was changed (pruned, or fine-tuned) and written to --out
EXIT_NO_EVIDENCE = 3  # no evidence of a backdoor: the model is left as it came in, and no model file is written
EXIT_NOT_REMOVED = 4  # a backdoor is suspected, but no pruning point kept the model usable: left as it came in, not written
EXIT_STILL_PRESENT = 5  # pruned and written, but unlearning the purified model still collapses onto the suspected target


def outcome(report: DefenseReport) -> int:
    if report.extra.get("backdoor_remains"):
        return EXIT_STILL_PRESENT
    if report.pruned > 0 or report.defense == "ft":
        return EXIT_PURIFIED
    return EXIT_NOT_REMOVED if report.backdoor_suspected else EXIT_NO_EVIDENCE


def run(cfg: Config, model_path: Path, arch: str, data: str, out: Path, defense_size: int = 500, image_size: int = 32,
        mean: str | None = None, std: str | None = None, min_accuracy: float = MIN_ACCURACY, defense: str = "rnp",
        channels: int | None = None, classes: list[str] | None = None, params_path: Path | None = None,
        export: list[str] | None = None) -> DefenseReport:
    """`cfg` carries the settings the flags set: recover.mask_on (--mask-on), prune.force (--force), unlearn.detection (--detection).
    The report's `extra["exit_code"]` is what the command exits with (EXIT_*)."""
    check_arguments(out, defense_size, image_size)
    check_outputs_are_not_inputs(out, [model_path, *([Path(data)] if Path(data).is_dir() else []), *([params_path] if params_path else [])])
    if not 0 <= min_accuracy <= 1:
        raise RnpError(f"--min-accuracy must be in [0, 1], got {min_accuracy}")
    if (mean is None) != (std is None):
        raise RnpError(f"{'--mean' if std is None else '--std'} needs {'--std' if std is None else '--mean'} too: give the model's "
                       f"normalisation whole, or neither (rnp then finds the one the model is accurate under)")
    if channels is not None and channels not in (1, 3):
        raise RnpError(f"--channels must be 1 or 3, got {channels}")
    DEFENSES.get(defense)  # an unknown name fails before any work
    mean_v, std_v = _floats(mean, "--mean"), _floats(std, "--std", positive=True)
    state = read_state_dict(model_path)
    expects = first_layer_channels(state, arch)
    if channels is not None and expects is not None and channels != expects:
        raise RnpError(f"--channels {channels}: the model's first layer takes {expects}-channel images")
    clean, evaluation, classes_n, data_mean, data_std, names, order = clean_data(data, cfg, defense_size, image_size,
                                                                               channels or expects or 3, classes)
    channels = clean.images.shape[1]
    if len(mean_v or data_mean) != channels or len(std_v or data_std) != channels:
        raise RnpError(f"--mean/--std need {channels} values (the images have {channels} channels)")
    spec = ModelSpec(arch, classes_n, tuple(clean.images.shape[1:]), mean_v or data_mean, std_v or data_std)
    model = load_untrusted(model_path, spec, state)
    mask_on = cfg.recover.mask_on
    if not mask_layers(model, mask_on):
        raise RnpError(f"--mask-on {mask_on}: {arch} has no such layer to mask (use one of {', '.join(MASK_ON)})")
    if "onnx" in (export or []):  # a model ONNX cannot express is found before any work
        onnx_bytes(model, tuple(clean.images.shape[1:]))
    if names is not None:
        say(f"defend: classes in label order ({order}): {', '.join(names)}")
    if mean_v is None:
        mean_v, std_v, how = choose_normalisation(model.eval(), clean, data_mean, data_std, min_accuracy, arch)
    else:
        how = "--mean/--std as given"
    spec = ModelSpec(arch, classes_n, tuple(clean.images.shape[1:]), mean_v, std_v)
    compute = resolve_compute(cfg.device, cfg.precision)
    seed_everything(cfg.seed)

    start = time.perf_counter()
    purified, report = defend(model, CleanData(clean.images, clean.labels, mean_v, std_v, classes_n, how),
                              DefendOptions(cfg, compute, min_accuracy, progress), defense)
    report.extra["normalisation"] = {"mean": list(mean_v), "std": list(std_v), "how": how}
    report.extra["seconds"] = round(time.perf_counter() - start, 2)
    report.extra["images"] = image_stats(clean.images, names, order)
    every = DeviceData(clean, mean_v, std_v, torch.device("cpu"))
    report.extra["clean_acc_after"] = accuracy(purified, every)
    if evaluation is not None:  # clean test accuracy, for the person reading the report
        test = DeviceData(evaluation, mean_v, std_v, torch.device("cpu"))
        report.extra["test_acc_before"], report.extra["test_acc_after"] = accuracy(model, test), accuracy(purified, test)
    code = outcome(report)
    report.extra["exit_code"] = code
    summary = report.to_json()

    stem = out.name[: -len(".safetensors")]
    written = []
    changed = code in (EXIT_PURIFIED, EXIT_STILL_PRESENT)  # a model left as it came in is not written under a name that says purified
    with StageWriter(out.parent, marker=f"{stem}.report.json") as w:  # the report, written last, vouches for the set
        if changed:
            w.write(out.name, model_bytes(purified, spec, {"stage": "defend", "report": {k: v for k, v in summary.items() if k != "class_scores"}}))
            written.append(out.name)
        if report.curve:  # a pruning defense's masks and sweep (fine-tuning has neither)
            w.write(f"{stem}.masks.safetensors", tensors_bytes(report.masks, {"mask_on": report.mask_on, "stage": "defend"}))
            w.write(f"{stem}.curve.csv", csv_bytes(report.curve))
            w.write(f"{stem}.curve.png", _curve_png(report))
            written += [f"{stem}.masks.safetensors", f"{stem}.curve.csv", f"{stem}.curve.png"]
        if changed and model_path.suffix in TORCH_SUFFIXES:  # the input's own format, where that is safe: a plain state dict
            w.write(f"{stem}.pt", state_dict_bytes(purified))
            written.append(f"{stem}.pt")
        if changed and "onnx" in (export or []):
            w.write(f"{stem}.onnx", checked_onnx(purified, every))
            written.append(f"{stem}.onnx")
        w.write(f"{stem}.report.json", json_bytes(summary))
        written.append(f"{stem}.report.json")
    if code in (EXIT_NO_EVIDENCE, EXIT_NOT_REMOVED) and out.exists():  # an earlier run's purified model beside this report would contradict it
        out.unlink()
    for warning in report.warnings:
        say(f"defend: WARNING: {warning}")
    held = report.clean_images["holdout"]
    acc = (f"clean accuracy {report.clean_acc:.1%} -> {report.extra['clean_acc_after']:.1%} on all {len(clean)} clean images; "
           f"held-out {report.holdout_acc_before:.1%} -> {report.holdout_acc_after:.1%} on {held}, {1 / held:.1%} each")
    what = {EXIT_PURIFIED: f"purified: {report.pruned} channels pruned" if report.defense != "ft" else "fine-tuned",
            EXIT_NO_EVIDENCE: "model unchanged (no evidence of a backdoor), not written",
            EXIT_NOT_REMOVED: "BACKDOOR SUSPECTED, NOT REMOVED: model unchanged, not written",
            EXIT_STILL_PRESENT: f"pruned {report.pruned} channels, but the BACKDOOR IS LIKELY STILL PRESENT"}[code]
    say(f"defend: {report.verdict}")
    say(f"defend: {what} ({acc}; {summary['seconds']:.1f} s); wrote {', '.join(written)} in {out.parent} (exit {code})")
    return report


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
EXPORTS = ("onnx",)


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def onnx_bytes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The model as ONNX (opset 17; input `images`, normalised as the report says; output `logits`; any batch size)."""
    import copy
    import warnings

    model = copy.deepcopy(model).cpu().float().eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(2, *input_shape),), buf, dynamo=False, opset_version=17, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as e:  # the exporter raises many kinds for an op it cannot express
        raise RnpError(f"--export onnx: the model cannot be expressed in ONNX ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None
    return buf.getvalue()


def checked_onnx(model: torch.nn.Module, clean: DeviceData) -> bytes:
    """ONNX bytes that onnxruntime has run on the clean images and found to give the PyTorch model's predictions."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RnpError("--export onnx checks the file with onnxruntime: pip install onnxruntime (or 'rnp[formats]')") from None
    data = onnx_bytes(model, tuple(clean.images.shape[1:]))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    model = model.cpu().float().eval()
    for x, _ in clean.batches(256):
        with torch.no_grad():
            expected = model(x.float())
        got = torch.from_numpy(session.run(None, {"images": x.float().numpy()})[0])
        if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4) or not torch.equal(got.argmax(1), expected.argmax(1)):
            raise RnpError(f"--export onnx: onnxruntime's logits differ from PyTorch's by up to {(got - expected).abs().max():.2g}; "
                           f"the ONNX file was not written")
    return data


def image_stats(images: torch.Tensor, names: list[str] | None, order: str) -> dict:
    """What the model was fed: count, size, per-channel mean and std (of pixels in 0..1), range; and the class order."""
    x = images.float() / 255
    return {"count": len(images), "channels": images.shape[1], "size": list(images.shape[2:]),
            "mean": [round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist()], "std": [round(v, 4) for v in x.std(dim=(0, 2, 3)).tolist()],
            "min": int(images.min()), "max": int(images.max()), "classes": names, "class_order": order}


def _curve_png(report: DefenseReport) -> bytes:
    """defend measures held-out clean accuracy only: no test CA, no ASR, no oracle."""
    rows = [{"threshold": r["threshold"], "holdout_acc": r["holdout_acc"]} for r in report.curve]
    return curve_png(rows, "threshold", report.selected, before={"holdout_acc": report.holdout_acc_before})

"""Generated garbage at `rnp defend`: model files, image folders and flags. A verdict (exit 0, 3 or 4), or exit 2 with
one line; never a traceback or an internal error, and the inputs are never changed."""

import hashlib
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from rnp.cli import main
from rnp.models import ModelSpec, create_model, model_bytes

from .conftest import default_params

SPEC = ModelSpec("small_cnn", 2, (3, 8, 8), (0.5,) * 3, (0.25,) * 3)
GOOD_MODEL = model_bytes(create_model(SPEC), SPEC, {})


def _safetensors(header: object, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


BAD_MODELS = {  # name -> bytes; the test draws names, so a failing example prints short
    "good": GOOD_MODEL,
    "wrong keys": _safetensors({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "offsets past the end": _safetensors({"x": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}),
    "header not a mapping": _safetensors("not a mapping"),
    "a pickle": b"\x80\x02}q\x00.",
}
MODEL_FILES = st.one_of(
    st.sampled_from(sorted(BAD_MODELS)),
    st.tuples(st.just("truncated"), st.integers(1, len(GOOD_MODEL) - 1)),
    st.tuples(st.just("random bytes"), st.binary(max_size=64)),
)


def model_bytes_for(recipe) -> bytes:
    if isinstance(recipe, str):
        return BAD_MODELS[recipe]
    kind, arg = recipe
    return GOOD_MODEL[:arg] if kind == "truncated" else arg


def _png(size: tuple[int, int], mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _odd_image(kind: str, cut: int) -> bytes:
    """Image files that are not plain 8-bit PNGs: 16-bit, CMYK, truncated, or declaring a size past Pillow's bomb limit."""
    buf = io.BytesIO()
    if kind == "16-bit":
        Image.fromarray(np.full((6, 5), 40000, np.uint16)).save(buf, format="PNG")
    elif kind == "cmyk":
        Image.new("CMYK", (5, 6), (10, 20, 30, 40)).save(buf, format="TIFF")
    elif kind == "bomb":  # a valid PNG header declaring 60000 x 60000 pixels
        return _png((8, 8), "RGB")[:16] + struct.pack(">II", 60000, 60000) + _png((8, 8), "RGB")[24:]
    else:
        return _png((8, 8), "RGB")[:cut]  # truncated
    return buf.getvalue()


FILES = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from(["RGB", "L", "RGBA", "P"])).map(lambda t: _png(t[:2], t[2])),
    st.tuples(st.sampled_from(["16-bit", "cmyk", "bomb", "truncated"]), st.integers(1, 60)).map(lambda t: _odd_image(*t)),
    st.binary(max_size=32),  # not an image, with an image's name
)
FOLDERS = st.dictionaries(st.sampled_from(["cat", "dog", "owl"]), st.lists(FILES, max_size=16), max_size=3)
FLAGS = st.fixed_dictionaries({}, optional={
    "--mean": st.sampled_from(["0.5,0.5,0.5", "0.5", "nan,0,0", "a,b,c", "1e309,0,0"]),
    "--std": st.sampled_from(["0.25,0.25,0.25", "0,0,0", "-1,1,1", "inf,1,1"]),
    "--image-size": st.sampled_from(["8", "0", "-3", "4"]),
    "--mask-on": st.sampled_from(["auto", "bn", "norm", "conv"]),
})


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=MODEL_FILES, folder=FOLDERS, flags=FLAGS)
@example(model="good", folder={"cat": [_png((8, 8), "RGB")] * 16, "dog": [_png((9, 7), "L")] * 16}, flags={})  # accepted: a verdict
def test_garbage_in_is_a_verdict_or_one_line_exit_2_and_inputs_unchanged(tmp_path_factory, capsys, model, folder, flags):
    tmp = tmp_path_factory.mktemp("garbage")
    inputs = tmp / "in"
    (inputs / "clean").mkdir(parents=True)
    (inputs / "model.safetensors").write_bytes(model_bytes_for(model))
    for cls, files in folder.items():
        (inputs / "clean" / cls).mkdir()
        for i, data in enumerate(files):
            (inputs / "clean" / cls / f"{i}.png").write_bytes(data)
    params = default_params()
    params["unlearn"]["max_epochs"], params["recover"]["epochs"] = 1, 1  # an accepted input finishes in seconds
    (inputs / "params.yaml").write_text(yaml.safe_dump(params))
    before = _digest(inputs)
    out = tmp / "out" / "purified.safetensors"
    argv = ["defend", "--model", str(inputs / "model.safetensors"), "--arch", "small_cnn", "--data", str(inputs / "clean"),
            "--out", str(out), "--params", str(inputs / "params.yaml"), "--image-size", "8"]
    for flag, value in flags.items():
        argv += [flag, value]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code in (0, 2, 3, 4), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("rnp defend: error: "), err
        assert not out.exists()
    else:  # purified (0) writes the model; "no evidence" (3) and "not removed" (4) leave it unwritten: it did not change
        report = json.loads((out.parent / "purified.report.json").read_text())
        assert out.exists() == (code == 0) and report["exit_code"] == code
        assert not report.get("backdoor_suspected") or report["clean_acc"] >= 0.6  # a model near chance is never called backdoored
    assert _digest(inputs) == before


def _params_text(kind: str, arg) -> bytes:
    """A params file of one kind of garbage: raw bytes, another encoding, a leaf set to a huge or odd number, deep nesting."""
    text = (ROOT_PARAMS.read_text())
    if kind == "bytes":
        return arg
    if kind == "encoding":  # the committed params with a non-ASCII comment, saved in another encoding
        return ("# paramètres réglés\n" + text).encode(arg)
    if kind == "number":
        key, value = arg
        raw = default_params()
        section, leaf = key.split(".") if "." in key else (None, key)
        (raw[section] if section else raw)[leaf] = value
        return yaml.safe_dump(raw).encode()
    return ("a: " * arg + "1").encode()  # nesting


ROOT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
NUMBER_KEYS = ["seed", "train.epochs", "train.batch_size", "data.image_size", "data.defense_size", "data.defense_seed", "attack.target",
               "attack.rate", "prune.max_number", "augment.crop_padding", "recover.lr"]
HUGE = st.one_of(st.integers(-(10**40), 10**40), st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 2**63, 2**64]))
PARAMS_FILES = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("encoding"), st.sampled_from(["utf-16", "latin-1", "utf-8-sig", "cp1252"])),
    st.tuples(st.just("number"), st.tuples(st.sampled_from(NUMBER_KEYS), HUGE)),
    st.tuples(st.just("nesting"), st.integers(50, 3000)),
)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(recipe=PARAMS_FILES)
def test_a_garbage_params_file_is_exit_0_or_one_line_exit_2_naming_it_never_an_internal_error(tmp_path_factory, capsys, recipe):
    tmp = tmp_path_factory.mktemp("params")
    path = tmp / "params.yaml"
    path.write_bytes(_params_text(*recipe))
    before = path.read_bytes()
    capsys.readouterr()
    code = main(["poison", "--params", str(path), "--out", str(tmp / "poison")])  # the stage that reads params first, in seconds
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("rnp poison: error: ") and "internal error" not in err, err
        assert not (tmp / "poison").exists()
    assert path.read_bytes() == before

"""Property-based bad params: any wrong type, out-of-range value, unknown key or missing section.

Each is exit 2, one line naming the key, nothing written.
"""

import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rnp.cli import main
from rnp.config import Config, config_from_dict
from rnp.stages import STAGES

from .conftest import default_params


def leaf_keys(cls=Config, prefix=""):
    """(dotted key, type) for every leaf param (Literal choices count as str)."""
    for name, info in cls.model_fields.items():
        hint = info.annotation
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            yield from leaf_keys(hint, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", str if typing.get_origin(hint) is typing.Literal else typing.get_origin(hint) or hint


LEAVES = list(leaf_keys())


def wrong_value(hint):
    """Values of the wrong type for a param of type `hint`."""
    if hint is bool:
        return st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False))
    if hint is int:
        return st.one_of(st.text(min_size=1, max_size=5), st.booleans(), st.lists(st.integers(), max_size=2))
    if hint is float:
        return st.one_of(st.text(min_size=1, max_size=5), st.booleans(), st.none())
    if hint is str:
        return st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
    return st.one_of(st.text(min_size=1, max_size=3), st.integers())  # lists


def set_key(raw, key, value):
    *sections, leaf = key.split(".")
    node = raw
    for s in sections:
        node = node[s]
    node[leaf] = value
    return raw


@st.composite
def bad_params(draw):
    raw = default_params()
    kind = draw(st.sampled_from(["type", "unknown", "section", "range"]))
    if kind == "type":
        key, hint = draw(st.sampled_from(LEAVES))
        return set_key(raw, key, draw(wrong_value(hint))), key
    if kind == "unknown":
        section = draw(st.sampled_from(["data", "attack", "train", "unlearn", "recover", "prune", "attack.wanet"]))
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=10))
        node = raw
        for s in section.split("."):
            node = node[s]
        if name in node:
            name += "_x"
        node[name] = 1
        return raw, f"{section}.{name}"
    if kind == "section":
        section = draw(st.sampled_from(["data", "attack", "train", "unlearn", "recover", "prune", "augment"]))
        raw[section] = draw(st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)))
        return raw, section
    key = draw(st.sampled_from(["train.epochs", "train.lr", "unlearn.max_epochs", "recover.epochs", "prune.step", "attack.rate",
                                "data.image_size", "attack.badnets.size", "recover.alpha"]))
    return set_key(raw, key, draw(st.integers(max_value=0) if key.endswith(("epochs", "size")) else st.floats(max_value=0.0, allow_nan=False))), key


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_params(), stage=st.sampled_from(list(STAGES)))
def test_every_bad_param_is_exit_2_and_names_its_key(tmp_path_factory, capsys, case, stage):
    raw, key = case
    tmp = tmp_path_factory.mktemp("p")
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp / "out"
    assert main([stage, "--params", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err, (key, err)
    assert not out.exists()


def test_a_missing_section_falls_back_to_documented_defaults_but_a_typo_never_does():
    raw = default_params()
    del raw["recover"]
    assert config_from_dict(raw).recover == Config().recover  # an absent section means "all defaults"
    raw["recovr"] = {"lr": 0.5}
    with pytest.raises(Exception, match="unknown key recovr"):
        config_from_dict(raw)

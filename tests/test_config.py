"""The typed config: the committed params.yaml is the documented defaults, and every choice list has one source."""

from pathlib import Path

import yaml

from rnp.config import Config, MaskOn, Precision, choices, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]

# keys where params.yaml deliberately differs from the built-in defaults, and why (none today)
DOCUMENTED_DIFFERENCES: dict[str, str] = {}


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_committed_params_equal_the_defaults_key_for_key():
    written = _leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    defaults = _leaves(Config().to_dict())
    assert set(written) == set(defaults), "params.yaml should spell out every key"
    differ = {k for k in defaults if written[k] != defaults[k]}
    assert differ == set(DOCUMENTED_DIFFERENCES), {k: (written[k], defaults[k]) for k in differ}
    assert load_config(ROOT / "params.yaml") == Config()


def test_choices_come_from_the_literal_types():
    from rnp.cli import _parser
    from rnp.defense.recover import MASK_ON

    assert MASK_ON == choices(MaskOn) == ("auto", "bn", "norm", "conv")
    defend = _parser()._subparsers._group_actions[0].choices["defend"]
    assert tuple(next(a for a in defend._actions if a.dest == "mask_on").choices) == choices(MaskOn)
    assert choices(Precision) == ("auto", "fp32", "bf16")


def test_types_are_strict_and_floats_accept_whole_numbers():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0
    for raw, message in [
        ({"train": {"epochs": "3"}}, "train.epochs must be int, got '3'"),
        ({"train": {"epochs": True}}, "train.epochs must be int, got True"),
        ({"augment": {"flip": 1}}, "augment.flip must be bool, got 1"),
        ({"unlearn": {"milestones": [5, 0]}}, "unlearn.milestones[1] must be >= 1, got 0"),
        ({"data": {"defense_size": 2.5}}, "data.defense_size must be a whole count >= 1 or a fraction in (0, 1), got 2.5"),
    ]:
        try:
            config_from_dict(raw, "p.yaml")
        except Exception as e:  # noqa: BLE001 - the message is the assertion
            assert str(e) == f"p.yaml: {message}"
        else:
            raise AssertionError(f"{raw} was accepted")

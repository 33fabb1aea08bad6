"""`rnp poison|train|unlearn|recover|prune|list`: one subcommand per stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_config
from .errors import RnpError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rnp", description="Reconstructive Neuron Pruning: backdoor defense pipeline.")
    sub = ap.add_subparsers(dest="command", required=True)

    def stage(name: str, help: str, *inputs: str) -> None:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
        for inp in inputs:
            sp.add_argument(f"--{inp}", type=Path, default=Path("data") / inp, help=f"{inp} stage outputs (default: data/{inp})")
        sp.add_argument("--out", type=Path, default=Path("data") / name, help=f"output folder (default: data/{name})")

    stage("poison", "poison a data set and draw the clean defense data")
    stage("train", "train the backdoored model", "poison")
    stage("unlearn", "unlearn: gradient ascent on clean defense data", "poison", "train")
    stage("recover", "recover: learn BN channel masks on the unlearned model", "poison", "unlearn")
    stage("prune", "prune the original model by mask value, choose a point, export", "poison", "train", "recover")
    sub.add_parser("list", help="list data sets, attacks and architectures")
    return ap


def _run(args: argparse.Namespace) -> None:
    if args.command == "list":
        from .attacks import ATTACKS
        from .data import DATASETS
        from .models import MODELS

        for registry in (DATASETS, ATTACKS, MODELS):
            print(f"{registry.kind}s ({registry.key}):")
            for name, line in registry.describe().items():
                print(f"  {name:<18} {line}")
        return
    cfg = load_config(args.params)
    from .stages import poison, prune, recover, train, unlearn

    if args.command == "poison":
        poison.run(cfg, args.out)
    elif args.command == "train":
        train.run(cfg, args.poison, args.out)
    elif args.command == "unlearn":
        unlearn.run(cfg, args.poison, args.train, args.out)
    elif args.command == "recover":
        recover.run(cfg, args.poison, args.unlearn, args.out)
    elif args.command == "prune":
        prune.run(cfg, args.poison, args.train, args.recover, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except RnpError as e:
        print(f"rnp {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

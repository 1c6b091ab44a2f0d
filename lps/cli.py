"""Command line: ``lps {demo,pretrain,train,methods,show,status,plan}``.

Every command takes config files (``-c FILE``, built-in names such as ``demo`` work too) and
``key=value`` overrides, e.g. ``lps train -c demo method=lps optim.lr=0.05 train.seed=1``.
"""

from __future__ import annotations

import argparse
import math
import sys

from lps.errors import LPSError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[],
                   help="YAML config file or built-in config name (repeatable; later files win)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 method=lps")


def _build(args) -> "Config":  # noqa: F821
    from lps.config import build_config

    overrides = list(args.overrides)
    if getattr(args, "init", None):
        overrides.append(f"model.init={args.init}")
    return build_config(args.config, overrides)


def format_table(rows: list[dict], cols=("acc_seen", "acc_novel", "acc_all", "nmi_novel")) -> str:
    head = f"{'run':<44} " + " ".join(f"{c:>10}" for c in cols) + f" {'time':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        vals = " ".join(f"{100 * r[c]:>10.1f}" if not math.isnan(r.get(c, math.nan)) else f"{'-':>10}" for c in cols)
        lines.append(f"{r['run_id'][:44]:<44} {vals} {r['wall_time_s']:>7.0f}s")
    return "\n".join(lines)


def cmd_pretrain(args) -> int:
    from lps.pretrain import pretrain

    print(pretrain(_build(args)))
    return 0


def cmd_train(args) -> int:
    from lps.trainer import train

    row = train(_build(args))
    print(format_table([row]))
    print("(accuracies in %, on the unlabeled training images; test split: "
          + ", ".join(f"{k[5:]} {100 * row[k]:.1f}" for k in ("test_acc_seen", "test_acc_novel", "test_acc_all")
                      if not math.isnan(row.get(k, math.nan))) + ")")
    return 0


def cmd_demo(args) -> int:
    """SimCLR pretraining, then k-means on the pretrained features and LPS, on Fashion-MNIST."""
    import time

    from lps.config import build_config
    from lps.pretrain import pretrain
    from lps.trainer import train

    t0 = time.time()
    files = ["demo"] + args.config
    base = build_config(files, args.overrides)
    print(f"[lps] demo: {base.data.dataset}, {base.data.seen_class_ratio:.0%} seen classes, "
          f"{base.data.label_ratio:.0%} of seen labeled; results in {base.output_dir}", flush=True)
    pretrain(base)
    rows = []
    for method in ("simclr_kmeans", "lps"):
        cfg = build_config(files, [*args.overrides, f"method={method}"])
        rows.append(train(cfg))
    print()
    print(format_table(rows))
    print(f"(accuracy in % on the unlabeled training images; k-means clusters are matched to the seen classes "
          f"through the labeled images, as the paper's SimCLR row; total {time.time() - t0:.0f}s)")
    return 0


def cmd_methods(args) -> int:
    import dataclasses

    from lps.methods import METHODS

    for name in METHODS.names():
        cls = METHODS.get(name)
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Params))
        print(f"{name:<14} {fields}")
    return 0


def cmd_show(args) -> int:
    from lps.config import config_to_yaml

    print(config_to_yaml(_build(args)), end="")
    return 0


def cmd_status(args) -> int:
    from lps.status import status_main

    try:
        print(status_main(args.results, slurm=not args.no_slurm))
    except FileNotFoundError as e:
        raise LPSError(str(e)) from None
    return 0


def cmd_plan(args) -> int:
    from lps.status import cost_plan

    if args.calibrate:
        from lps.calibrate import calibrate

        try:
            calibrate(args.results, steps=args.steps, device=args.device, data_dir=args.data_dir,
                      imagenet_dir=args.imagenet_dir, imagenet_per_class=args.imagenet_per_class)
        except FileNotFoundError as e:
            raise LPSError(f"{e}: run `snakemake -n --profile ...` with results_dir={args.results} first") from None
    try:
        print(cost_plan(args.results, args.measured, jobs=args.jobs))
    except FileNotFoundError as e:
        raise LPSError(str(e)) from None
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="?", default="results", help="the workflow's results folder")
    p.add_argument("--no-slurm", action="store_true", help="do not ask SLURM (results folder only)")


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="?", default="results",
                   help="results folder whose plan.json (written by `snakemake -n`) is costed")
    p.add_argument("--measured", action="append", default=[], metavar="RESULTS",
                   help="another results folder whose runs' epoch times count too, e.g. a short "
                        "calibration run on the target GPU (repeatable)")
    p.add_argument("--jobs", type=int, default=32, help="jobs at once (the profile's `jobs:`)")
    p.add_argument("--calibrate", action="store_true",
                   help="first measure each method/dataset of the plan on this device (a few steps each; run it "
                        "on a node of the target GPU), into RESULTS/calibration.json")
    p.add_argument("--steps", type=int, default=20, help="--calibrate: training steps measured per method/dataset")
    p.add_argument("--device", default="auto", help="--calibrate: device (auto: CUDA when present)")
    p.add_argument("--data-dir", default="", help="--calibrate: real CIFAR data (default: synthetic, same format)")
    p.add_argument("--imagenet-dir", default="", help="--calibrate: real ImageNet train folder (default: synthetic)")
    p.add_argument("--imagenet-per-class", type=int, default=260,
                   help="--calibrate: synthetic ImageNet-100 JPEGs per class (steps scaled to 1,300)")


COMMANDS = {
    "demo": ("pretrain + k-means baseline + LPS on Fashion-MNIST, print a table", cmd_demo, True),
    "pretrain": ("SimCLR pretraining of the backbone", cmd_pretrain, True),
    "train": ("train and evaluate one run (resumes automatically)", cmd_train, True),
    "methods": ("list registered methods and their hyperparameters", cmd_methods, False),
    "show": ("print the resolved config", cmd_show, True),
    "status": ("where a workflow's runs stand, per table (results folder + SLURM)", cmd_status, _status_args),
    "plan": ("jobs, device-hours and wall time per table of a planned set", cmd_plan, _plan_args),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: lps {" + ",".join(COMMANDS) + "} [-c CONFIG] [key=value ...]\n\n" + __doc__ + "\ncommands:\n" + \
        "\n".join(f"  {name:<10} {text}" for name, (text, _, _) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage, file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    name = argv[0]
    text, func, takes_config = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"lps {name}", description=text)
    if callable(takes_config):
        takes_config(parser)
    elif takes_config:
        _add_config_args(parser)
    if name == "train":
        parser.add_argument("--init", help="backbone state_dict to start from ('scratch' for random init)")
    # options and key=value overrides may come in any order
    args = parser.parse_intermixed_args(argv[1:])
    try:
        return func(args)
    except LPSError as e:
        print(f"lps: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lps: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

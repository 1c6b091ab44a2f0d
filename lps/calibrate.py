"""``lps plan RESULTS --calibrate``: measure the epoch time of every (method, dataset) of a planned set on
this machine's device (run it on a node of the target GPU), for ``lps plan`` to cost the set with.

For each group of the plan (``plan.json``: training runs by method and dataset, SimCLR pretraining by
dataset) one representative run trains ``--steps`` steps of one epoch and evaluates as the real run
does, into ``<results>/calibration/``. Its epoch time is extrapolated to a full epoch: the measured
seconds per step times the real run's steps per epoch, plus its evaluation time. Data: the real
datasets when ``--data-dir`` / ``--imagenet-dir`` hold them, else synthetic images in the real on-disk
formats (:mod:`lps.data.synthetic`), full-sized for CIFAR and ``--imagenet-per-class`` JPEGs of
ImageNet's typical size per class for ImageNet-100 (steps and evaluation scaled to its 1,300 per
class); throughput does not depend on what the pixels show. The result is
``<results>/calibration.json``: ``{"device": ..., "epoch_s": {"train|lps|cifar10": seconds, ...}}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# training images per class of the real datasets (CIFAR exact; ImageNet-100 about 1,300)
REAL_PER_CLASS = {"cifar10": 5000, "cifar100": 500, "imagenet100": 1300}
TEST_PER_CLASS = {"cifar10": 1000, "cifar100": 100, "imagenet100": 50}


def group_key(kind: str, method: str, dataset: str) -> str:
    return f"{kind}|{method}|{dataset}"


def _synthetic(root: Path, dataset: str, imagenet_per_class: int) -> dict:
    """Site overrides pointing ``dataset`` at synthetic files under ``root`` (written once), and the
    factor from their size to the real one."""
    from lps.data.synthetic import write_cifar, write_imagenet

    if dataset in ("cifar10", "cifar100"):
        if not (root / dataset / ".done").exists():
            write_cifar(root / dataset, dataset, REAL_PER_CLASS[dataset], TEST_PER_CLASS[dataset])
            (root / dataset / ".done").touch()
        return {"overrides": [f"data.data_dir={root / dataset}"], "scale": 1.0}
    if dataset == "imagenet100":
        d = root / "imagenet"
        if not (d / ".done").exists():
            write_imagenet(d, imagenet_per_class, max(1, imagenet_per_class // 26), size=(375, 500))
            (d / ".done").touch()
        return {"overrides": [f"data.imagenet_dir={d / 'train'}"], "scale": REAL_PER_CLASS[dataset] / imagenet_per_class}
    return {"overrides": [], "scale": 1.0}  # fashion_mnist ships with Debian: the real files


def calibrate(results: str | Path, steps: int = 20, device: str = "auto", data_dir: str = "", imagenet_dir: str = "",
              imagenet_per_class: int = 260, synthetic_root: str = "", log=print) -> Path:
    from lps.launch.job import Job, build  # the entry point that runs a training or a pretraining

    results = Path(results)
    man = json.loads((results / "plan.json").read_text())
    out_dir = results / "calibration"
    synth_root = Path(synthetic_root) if synthetic_root else out_dir / "data"
    groups: dict[str, tuple[str, list[str], str]] = {}
    for rid, r in man["runs"].items():
        if r.get("epochs"):
            groups.setdefault(group_key("train", r["method"], r["dataset"]), ("train", r["args"], r["dataset"]))
    for pid, p in man["pretrain"].items():
        groups.setdefault(group_key("pretrain", "simclr", p["dataset"]), ("pretrain", p["args"], p["dataset"]))
    path = results / "calibration.json"
    calib = json.loads(path.read_text()) if path.exists() else {"epoch_s": {}}
    for key, (kind, args, dataset) in sorted(groups.items()):
        if key in calib["epoch_s"]:
            log(f"[calibrate] {key}: {calib['epoch_s'][key]:.1f} s per epoch (measured before)")
            continue
        site = [f"output_dir={out_dir / 'runs'}", f"train.device={device}", "train.progress=none"]
        real = (dataset in ("cifar10", "cifar100") and data_dir) or (dataset == "imagenet100" and imagenet_dir)
        if real:
            site += [f"data.data_dir={data_dir}"] if data_dir else []
            site += [f"data.imagenet_dir={imagenet_dir}"] if imagenet_dir else []
            scale = 1.0
        else:
            s = _synthetic(synth_root, dataset, imagenet_per_class)
            site += s["overrides"]
            scale = s["scale"]
        t0 = time.time()
        if kind == "pretrain":
            job_args = [*args, *site, "pretrain.epochs=1", f"pretrain.max_steps_per_epoch={steps}"]
            cfg = build(job_args)
            folder = Path(Job("pretrain", job_args)()).parent
        else:
            job_args = [*args, *site, "optim.epochs=1", f"train.max_steps_per_epoch={steps}",
                        "model.init=scratch"]  # the weights do not change the speed
            folder = out_dir / "runs" / Job("train", job_args)()
        rec = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()][-1]
        info = json.loads((folder / "run_info.json").read_text()) if (folder / "run_info.json").exists() else {}
        done = max(1, min(steps, int(info.get("steps_per_epoch") or steps)))
        step_s = rec["train_time_s"] / done if "train_time_s" in rec else rec["epoch_time_s"] / done
        eval_s = max(0.0, rec.get("epoch_time_s", 0.0) - rec.get("train_time_s", rec.get("epoch_time_s", 0.0)))
        if kind == "pretrain":
            full_steps = int(info["n_images"] * scale) // cfg.pretrain.batch_size
        else:
            full_steps = int(info["n_labeled"] * scale) // max(1, int(info["batch_labeled"]))
        calib["epoch_s"][key] = step_s * full_steps + eval_s * scale
        hw = info.get("hardware") or {}
        calib["device"] = hw.get("gpu") or f"{hw.get('device', device)} ({hw.get('cpu_count', '?')} CPUs)"
        calib.setdefault("steps", steps)
        log(f"[calibrate] {key}: {step_s:.3f} s/step x {full_steps} steps + eval {eval_s * scale:.1f} s = "
            f"{calib['epoch_s'][key]:.1f} s per epoch ({time.time() - t0:.0f} s to measure)")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(calib, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return path


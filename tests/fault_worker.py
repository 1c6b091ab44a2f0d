"""Fault-injection worker (run by tests/test_crash_safety.py as a subprocess).

    python fault_worker.py {train|pretrain} OUT_JSON KILL_AT... -- OVERRIDES...

For each write point number k in KILL_AT, in a fresh copy of the run: a forked child runs the job
with $LPS_FAULT_AT=k (``lps.utils.write_point`` SIGKILLs it there), then a second forked child
reruns it with no fault. K=0 means one uninterrupted run with $LPS_FAULT_LOG recording every write
point. Forking one warm interpreter keeps a kill-and-rerun to the cost of the training itself.
Writes {k: {"killed": bool, "rerun_rc": int, "run_root": path}} to OUT_JSON.
"""

import json
import os
import signal
import sys

import torch

torch.set_num_threads(1)

from lps.config import build_config  # noqa: E402


def job(kind: str, overrides: list[str]) -> None:
    cfg = build_config([], overrides)
    if kind == "train":
        from lps.trainer import train

        train(cfg)
    else:
        from lps.pretrain import pretrain

        pretrain(cfg)


def in_child(kind: str, overrides: list[str], env: dict) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.environ.update(env)
            sys.stdout = open(os.devnull, "w")
            job(kind, overrides)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main() -> None:
    kind, out_json = sys.argv[1], sys.argv[2]
    sep = sys.argv.index("--")
    points = [int(k) for k in sys.argv[3:sep]]
    base = sys.argv[sep + 1:]
    root = next(o.split("=", 1)[1] for o in base if o.startswith("output_dir="))
    out = {}
    for k in points:
        run_root = os.path.join(os.path.dirname(root), f"fault_{k}")
        overrides = [o for o in base if not o.startswith("output_dir=")] + [f"output_dir={run_root}/runs"]
        os.makedirs(run_root, exist_ok=True)
        if k == 0:
            rc = in_child(kind, overrides, {"LPS_FAULT_LOG": os.path.join(run_root, "write_points.tsv")})
            out[k] = {"killed": False, "rerun_rc": rc, "run_root": run_root}
            continue
        first = in_child(kind, overrides, {"LPS_FAULT_AT": str(k)})
        rerun = in_child(kind, overrides, {})
        out[k] = {"killed": first == -signal.SIGKILL, "first_rc": first, "rerun_rc": rerun, "run_root": run_root}
    with open(out_json, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A tiny stand-in for the trainer, for launcher tests: same CLI shape, same exit codes.

``fixture_trainer.py --run-dir DIR --deadline ISO [--config X] [steps=N] [step_time=S] [fail_at=K] [key=value ...]``

It advances a deterministic state (step, value) once per step, appends one line per step to
``RUN_DIR/steps.log`` (rank 0), and checkpoints to ``RUN_DIR/checkpoints/state.json``
(tmp + rename), noting each early stop in ``RUN_DIR/stops.log``. SIGUSR2/SIGTERM set a flag;
at the next step boundary it checkpoints and exits 75. Past the deadline it does the same. At
the end it writes ``RUN_DIR/done`` and exits 0.

Test aids: ``fail_at=K`` exits 3 at step K (a crash). ``deadline_at_step=K`` acts as if the
deadline had passed at step K in the job's first run (LAUNCHER_RESTART_COUNT 0);
``stop_every=K`` does so after every K steps of each run; ``ignore_deadline=1`` leaves stopping
to the scheduler's signals. Every rank runs the same steps; rank 0 writes.

Like the trainer, rank 0 also writes ``RUN_DIR/metrics.csv`` (``step,epoch,samples_per_s,time/step``,
one row per step, batch 1) and ``RUN_DIR/logs/train.log`` (``starting: N steps``/``resumed from step S``,
then ``step S/N ...`` lines), which ``launcher status`` and ``launcher list`` read.
"""

import json
import os
import signal
import sys
import time
from datetime import datetime, timezone

EXIT_RESUME = 75


def advance(value: int, step: int) -> int:
    """One training step of the fixture: the final value depends on every step, in order."""
    return (value * 31 + step * 7 + 1) % 1_000_003


def rank() -> int:
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK", "PJM_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def trainer_log(run_dir, text):
    """One line of logs/train.log in the trainer's format (``TIME rank0 INFO TEXT``)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    with open(os.path.join(run_dir, "logs", "train.log"), "a") as f:
        f.write(f"{stamp} rank0 INFO {text}\n")


def metrics_row(run_dir, step, seconds):
    path = os.path.join(run_dir, "metrics.csv")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("step,epoch,samples_per_s,time/step\n")
        f.write(f"{step},0,{1.0 / max(seconds, 1e-9)},{seconds}\n")


def main(argv):
    opts = {}
    words = list(argv)
    while words:
        w = words.pop(0)
        if w.startswith("--"):
            opts[w[2:].replace("-", "_")] = words.pop(0)
        else:
            k, v = w.split("=", 1)
            opts[k] = v
    run_dir = opts["run_dir"]
    steps = int(opts.get("steps", 20))
    step_time = float(opts.get("step_time", 0.2))
    fail_at = int(opts.get("fail_at", -1))
    fake_deadline_step = int(opts.get("deadline_at_step", -1))
    if os.environ.get("LAUNCHER_RESTART_COUNT", "0") != "0":
        fake_deadline_step = -1
    stop_every = int(opts.get("stop_every", 0))
    ignore_deadline = opts.get("ignore_deadline", "0") == "1"  # rely on the scheduler's signals only
    deadline = datetime.strptime(opts["deadline"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    me = rank()
    ckpt = os.path.join(run_dir, "checkpoints", "state.json")
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGUSR2, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    state = {"step": 0, "value": 0}
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            state = json.load(f)
    if me == 0:
        with open(os.path.join(run_dir, "argv.log"), "a") as f:
            f.write(json.dumps(argv) + "\n")
        if state["step"]:
            trainer_log(run_dir, f"resumed from step {state['step']} (epoch 0, batch {state['step']} of {steps})")
        else:
            trainer_log(run_dir, f"starting: {steps} steps (1 epochs x {steps} steps), global batch 1 on 1 rank(s)")

    def save():
        if me == 0:
            tmp = ckpt + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, ckpt)
            # the run layout's pointer to the newest checkpoint (ARCHITECTURE.md "Runs")
            latest = os.path.join(run_dir, "checkpoints", "latest")
            with open(latest + ".tmp", "w") as f:
                f.write("state.json\n")
            os.replace(latest + ".tmp", latest)

    if stop_every:
        fake_deadline_step = state["step"] + stop_every
    while state["step"] < steps:
        past_deadline = time.time() >= deadline and not ignore_deadline
        if stop["signal"] or past_deadline or state["step"] == fake_deadline_step:
            save()
            if me == 0:
                reason = stop["signal"] or "deadline"
                with open(os.path.join(run_dir, "stops.log"), "a") as f:
                    f.write(f"{state['step']} {reason}\n")
                print(f"fixture: checkpoint at step {state['step']} ({reason})", flush=True)
            return EXIT_RESUME
        if state["step"] == fail_at:
            print(f"fixture: crashing at step {fail_at}", flush=True)
            return 3
        t0 = time.monotonic()
        time.sleep(step_time)
        state["value"] = advance(state["value"], state["step"])
        state["step"] += 1
        if me == 0:
            metrics_row(run_dir, state["step"], time.monotonic() - t0)
            trainer_log(run_dir, f"step {state['step']}/{steps} epoch 0 loss 0.0000")
            with open(os.path.join(run_dir, "steps.log"), "a") as f:
                f.write(
                    f"{state['step']} {os.environ.get('LAUNCHER_JOB_ID', '')} "
                    f"{os.environ.get('LAUNCHER_RESTART_COUNT', '')}\n"
                )
    save()
    if me == 0:
        with open(os.path.join(run_dir, "done"), "w") as f:
            f.write(f"step {state['step']}\n")
        print(f"fixture: done, value {state['value']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

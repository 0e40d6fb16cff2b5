"""Checkpoint cost: the crash-safe store (hash + fsync + rename + manifest) vs a bare ``torch.save``.

Prints, measured in one run on the same state:
- save ratio  = CheckpointStore.save / torch.save to a file, and / torch.save + fsync (the price
  of the hash, the rename and the manifest over a merely durable write);
- load ratio  = CheckpointStore.load (CRC32 verify + weights_only load) / torch.load;
- absolute seconds, which the trainer's deadline rule needs as its checkpoint time.

Default: a PixPro ResNet-18 state (online + momentum + LARS buffers, ~135 MB), under ~60 s.
``--arch resnet50`` gives the seed's state (~400 MB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    a = ap.parse_args(argv)

    import torch

    from pixpro_of.model.pixpro import ModelConfig, PixPro
    from pixpro_of.optim.lars import LARS, param_groups
    from pixpro_of.train.checkpoint import CheckpointStore

    torch.set_num_threads(1)
    model = PixPro(ModelConfig(arch=a.arch))
    opt = LARS(param_groups(model.online_modules(), 1e-5), lr=0.1)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    opt.step()  # fills the momentum buffers
    state = {"step": 1, "epoch": 0, "model": model.state_dict(), "optimizer": opt.state_dict()}

    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        root = Path(tmp)
        store = CheckpointStore(root / "ck", keep=1)
        raw_save, sync_save, safe_save, raw_load, safe_load = [], [], [], [], []
        for i in range(a.repeats):
            state["step"] = i + 1
            t0 = time.perf_counter()
            torch.save(state, root / "raw.pt")
            raw_save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with open(root / "sync.pt", "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            sync_save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            info, _ = store.save(state)
            safe_save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch.load(root / "raw.pt", weights_only=True)
            raw_load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.load(info)
            safe_load.append(time.perf_counter() - t0)
        size = info.size / 1e6
    med = statistics.median
    print(f"checkpoint of PixPro {a.arch} + LARS state: {size:.0f} MB, median of {a.repeats}")
    print(
        f"  save: store {med(safe_save):.2f} s vs torch.save {med(raw_save):.2f} s  ratio "
        f"{med(safe_save) / med(raw_save):.2f}"
    )
    print(
        f"  save: store {med(safe_save):.2f} s vs torch.save+fsync {med(sync_save):.2f} s  "
        f"ratio {med(safe_save) / med(sync_save):.2f}"
    )
    print(
        f"  load: store {med(safe_load):.2f} s vs torch.load {med(raw_load):.2f} s  ratio "
        f"{med(safe_load) / med(raw_load):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

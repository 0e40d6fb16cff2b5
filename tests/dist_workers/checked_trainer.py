"""Worker for tests/test_collective_device.py: the trainer (tiny doubles) on gloo DDP, its
collectives declared on ``meta`` (pixpro_of.dist.checked), node sets of different sizes and
``data.on_bad_sample=skip``, so every host-side agreement of the trainer runs.

usage: checked_trainer.py RUN_DIR OUT_DIR   (rank and world from torchrun's variables)
Writes OUT_DIR/rank{R}.json: the exit code and the checked collectives by caller.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for test_train_support

from test_train_support import TINY_OVERRIDES, TinyClips, tiny_components  # noqa: E402

from pixpro_of.config import load_config  # noqa: E402
from pixpro_of.dist.backend import make_backend  # noqa: E402
from pixpro_of.dist.checked import DeviceCheckedBackend  # noqa: E402
from pixpro_of.train.components import FixedClips  # noqa: E402
from pixpro_of.train.trainer import Trainer  # noqa: E402


class NodeSetClips(FixedClips):
    """Node sets of 6 and 8 videos: the nodes must agree on the smaller node's steps."""

    node_sets = True

    def open(self, node_index, num_nodes, all_frames=False, decode=True):
        return TinyClips(videos=6 + 2 * node_index, k=2, seed=node_index)


def main() -> int:
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = load_config(
        None,
        TINY_OVERRIDES
        + ["run.epochs=2", "data.on_bad_sample=skip", "dist.backend=ddp", "log.every_steps=1", "log.csv=true"],
    )
    parts = tiny_components()
    parts.clips = lambda cfg, run_dir: NodeSetClips(None)
    be = DeviceCheckedBackend(make_backend("ddp", device="cpu", timeout_s=120), declared="meta")
    trainer = Trainer(cfg, run_dir, backend=be, components=parts)
    try:
        code = trainer.run()
        error = ""
    except Exception as exc:  # noqa: BLE001 - reported to the test
        code, error = 2, str(exc)
    calls = {f"{what} {caller}": n for (what, caller), n in be.calls.items()}
    (out_dir / f"rank{be.rank}.json").write_text(
        json.dumps({"code": code, "error": error, "calls": calls, "steps_per_epoch": trainer.steps_per_epoch})
    )
    be.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())

"""How right are the positives of each row of the reproduction, against the synthetic world's exact geometry?

    python bench/positive_precision.py                      # the CPU profile: 128-px views, k = 6
    python bench/positive_precision.py --image-size 224 --k 2 --flows none,gt,dis

For clips of the reproduction's pretraining world (256x128 frames, world seed 100, one clip per
draw), the sample pipeline draws both views exactly as in training; the positives are then
computed from:

- ``none``: zero flow, no mask (``data.flow_source=none``, the k6-noflow control);
- ``gt``: the world's exact per-step flows stored at 1/8 and chained, seed FB mask (k6-exact);
- ``dis``: OpenCV DIS flows at 1/8, chained, seed FB mask (k6).

Truth: query cell i is visible in the other frame and, moved by the world's exact geometry
(``Renderer.track``), lands within 0.7 bin diagonals of key cell j (the PixPro rule). Printed per
flow: precision (right pairs / positives), recall (right pairs found / right pairs), positives per
image-direction, and label agreement (positive pairs whose two cell centres carry the same
class label; the same figure for the right pairs is the ceiling). Also the motion between the two
frames (median, 90th percentile, px) in units of the C5 bin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def labels_at(labels: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h, w = labels.shape
    ix = np.clip(np.floor(pts[:, 0] + 0.5).astype(int), 0, w - 1)
    iy = np.clip(np.floor(pts[:, 1] + 0.5).astype(int), 0, h - 1)
    return labels[iy, ix]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=128, help="view side (C5 grid = size / 32)")
    ap.add_argument("--k", type=int, default=6, help="clip length: frames t and t+k-1")
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--samples", type=int, default=40, help="samples per video")
    ap.add_argument("--flows", default="none,gt,dis")
    ap.add_argument("--world-seed", type=int, default=100, help="the reproduction's pretraining world")
    args = ap.parse_args()

    import torch

    from flow.ops import full_flow_to_shard
    from pixpro_of.config import PositiveConfig, SampleConfig
    from pixpro_of.data.pipeline import SampleBuilder
    from pixpro_of.positives import bin_size, cell_centres, compute_positives
    from synth import Renderer, render_video, video_seed

    torch.set_num_threads(1)
    ratio = PositiveConfig().pos_ratio  # the PixPro rule: within 0.7 of the larger bin diagonal

    def centres(box, flip):
        """The pipeline's own cell centres [grid², 2] of one view, and its bin diagonal."""
        b = box[None].double()
        return (
            cell_centres(b, torch.tensor([bool(flip)]), grid)[0].numpy(),
            float(torch.linalg.vector_norm(bin_size(b, grid)[0])),
        )

    W, H, T, k = 256, 128, 16, args.k
    grid = args.image_size // 32
    flows = [f.strip() for f in args.flows.split(",") if f.strip()]
    dis = None
    if "dis" in flows:
        from flow.estimators import make_estimator

        dis = make_estimator("dis")
    stats = {f: dict(right=0, pos=0, same=0) for f in flows}
    truth_pairs = truth_same = 0
    motion = []
    builder = SampleBuilder(SampleConfig(image_size=args.image_size), feature_size=grid, carry="flows")
    for v in range(args.videos):
        seed = video_seed(args.world_seed, v)
        video, world = render_video(seed, T, size=(W, H)), Renderer(seed, T, size=(W, H))
        rng = np.random.default_rng(v)
        for _ in range(args.samples):
            t = int(rng.integers(0, T - k + 1))
            t2 = t + k - 1
            per_flow = {
                "gt": (
                    full_flow_to_shard(torch.from_numpy(video.fwd[t:t2])),
                    full_flow_to_shard(torch.from_numpy(video.bwd[t:t2])),
                )
            }
            if dis is not None:
                fr = video.rgb[t : t2 + 1]
                per_flow["dis"] = (dis(fr[:-1], fr[1:]).low, dis(fr[1:], fr[:-1]).low)
            clip = {
                "frame1": video.rgb[t],
                "frame2": video.rgb[t2],
                "fwd": per_flow["gt"][0].numpy(),
                "bwd": per_flow["gt"][1].numpy(),
                "video": "w",
                "t": t,
                "k": k,
            }
            s = builder(clip, rng)
            c1, d1 = centres(s["box1"], s["flip1"])
            c2, d2 = centres(s["box2"], s["flip2"])
            diag = max(d1, d2)
            right = []
            for q, keys, a, b in ((c1, c2, t, t2), (c2, c1, t2, t)):
                landed, visible = world.track(a, b, q)
                right.append(visible[:, None] & (np.linalg.norm(landed[:, None] - keys[None], axis=-1) / diag < ratio))
                motion.append(np.linalg.norm(landed - q, axis=1)[visible] / diag)
            l1, l2 = labels_at(video.labels[t], c1), labels_at(video.labels[t2], c2)
            same = [l1[:, None] == l2[None, :], l2[:, None] == l1[None, :]]
            for r, sm in zip(right, same):
                truth_pairs += int(r.sum())
                truth_same += int((r & sm).sum())
            geo = (
                s["box1"][None].double(),
                torch.tensor([bool(s["flip1"])]),
                s["box2"][None].double(),
                torch.tensor([bool(s["flip2"])]),
                (H, W),
                grid,
            )
            for f in flows:
                if f == "none":
                    zero = torch.zeros(1, k - 1, 2, H // 8, W // 8)
                    out = compute_positives(*geo, PositiveConfig(mask="none"), zero, zero)
                else:
                    fwd, bwd = per_flow[f]
                    out = compute_positives(*geo, PositiveConfig(mask="seed"), fwd[None], bwd[None])
                for pos, r, sm in zip((out["pos12"][0].numpy(), out["pos21"][0].numpy()), right, same):
                    stats[f]["pos"] += int(pos.sum())
                    stats[f]["right"] += int((pos & r).sum())
                    stats[f]["same"] += int((pos & sm).sum())
    n_dirs = 2 * args.videos * args.samples
    m = np.concatenate(motion)
    print(
        f"views {args.image_size} px ({grid}x{grid} C5 grid), k = {k} (frames t and t+{k - 1} at 10 fps), "
        f"{args.videos} videos x {args.samples} samples of world seed {args.world_seed}"
    )
    print(
        f"motion of the query cells between the two frames: median {np.median(m):.2f}, "
        f"90th percentile {np.percentile(m, 90):.2f} bin diagonals (positives: < {ratio:g})"
    )
    print("| positives from | precision | recall | positives per image-direction | label agreement |")
    print("|---|---|---|---|---|")
    for f in flows:
        st = stats[f]
        print(
            f"| {f} | {st['right'] / max(st['pos'], 1):.3f} | {st['right'] / max(truth_pairs, 1):.3f} | "
            f"{st['pos'] / n_dirs:.1f} | {st['same'] / max(st['pos'], 1):.3f} |"
        )
    print(f"| (the right pairs) | 1 | 1 | {truth_pairs / n_dirs:.1f} | {truth_same / max(truth_pairs, 1):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

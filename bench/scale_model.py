"""The scale model of docs/scale.md: BDD100K at the seed's settings on 4 to 256 GPUs.

Combines the figures ``bench/bench_scale.py`` measures (shard format, model size, staging copier,
JPEG decode) with documented rates (each constant below names its source) and prints the tables
of docs/scale.md as Markdown. Every derived figure is arithmetic on those two kinds of input.

    .venv/bin/python bench/bench_scale.py > /tmp/scale.json
    .venv/bin/python bench/scale_model.py /tmp/scale.json        # or without an argument: runs the bench
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# ---- documented rates and settings (source in each comment) --------------------------------------
VIDEOS = 100_000  # BDD100K: 100k videos of ~40 s (Yu et al., CVPR 2020)
TRAIN_VIDEOS = 70_000  # its training split, the one the seed pretrains on (same paper; seed README)
FRAMES = 400  # 40 s at the seed's 10 fps (seed: ffmpeg -r 10, dataset_prepare/bdd100k)
JPEG_BYTES = 110_700  # seed's 1280x720 frames (ffmpeg -q:v 0): images/train 3.1 TB for ~28 M frames
K = 6  # clip length of the flow run (seed scripts, configs/train/pixpro_k6.yaml)
GLOBAL_BATCH = 1024  # seed: 16 GPUs x 64 (configs/train/pixpro_k6.yaml)
EPOCHS = 2000  # seed: 2000 "video epochs", one clip per video per epoch
# sample pipeline (k=6, two 224 views, positives deferred to the GPU as the GPU presets do) / decoding its two
# JPEGs, one worker: bench/bench_pipeline.py, 0.661 and 0.663 on 2026-12-08 on the 2-core development VM
PIPELINE_VS_DECODE = 0.66
SSL_PER_SUPERVISED = 8 / 3  # backbone work of one PixPro sample in supervised-image units (bench_gpu_step.py)
GPU_RATES = {  # samples/s per GPU
    # PixPro on ImageNet, 8x V100-32GB, ~58 h per 100 epochs (zdaxie/PixPro issue #7, a user report):
    # 1.281 M x 100 / (58 h x 3600 s) / 8 GPUs
    "V100, PixPro as reported": 1_281_167 * 100 / (58 * 3600) / 8,
    # NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5 README: A100-80GB, AMP, 1 GPU: 2,470 img/s;
    # a PixPro sample is ~8/3 supervised images of backbone work
    "A100, at supervised efficiency": 2470 / (8 / 3),
}
DISKS = {  # node-local write ceilings from the interface specifications
    "SATA III SSD (6 Gb/s, 8b/10b)": 0.6e9,
    "NVMe PCIe 3.0 x4 (8 GT/s x4, 128b/130b)": 3.94e9,
    "NVMe PCIe 4.0 x4 (16 GT/s x4, 128b/130b)": 7.88e9,
}
NIC = {"InfiniBand HDR (200 Gb/s)": 25e9, "InfiniBand NDR (400 Gb/s)": 50e9}  # IBTA data rates
GPUS_PER_NODE = 4  # the seed's nodes (4 GPUs each, 4 nodes = 16 GPUs)
NODE_COUNTS = (4, 16, 64)
GPU_COUNTS = (16, 256)
DAY = 24 * 3600


def gb(x):
    return f"{x / 1e9:,.1f} GB" if x < 1e12 else f"{x / 1e12:,.2f} TB"


def hms(s):
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def main(argv) -> int:
    if argv:
        m = json.loads(Path(argv[0]).read_text())
    else:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("bench_scale.py"))],
            check=True,
            capture_output=True,
            text=True,
        )
        m = json.loads(out.stdout)
    flow_pair = m["shards"]["flow_bytes_per_pair_both_directions"]
    overhead = m["shards"]["overhead_bytes_per_frame"]
    grad = m["model_k6"]["gradient_bytes_fp32"]
    sha = m["staging"]["sha256_bytes_per_s_one_core"]
    decode = m["jpeg_720p"]["bdd_sized_decodes_per_s_one_thread"]

    print("### Bytes\n")
    print("| | frames | JPEG | flows (fp16, 1/8, both directions) | shard overhead | total |")
    print("|---|---|---|---|---|---|")
    totals = {}
    for label, videos in (("100k videos", VIDEOS), ("70k train videos", TRAIN_VIDEOS)):
        frames, pairs = videos * FRAMES, videos * (FRAMES - 1)
        j, f, o = frames * JPEG_BYTES, pairs * flow_pair, frames * overhead
        totals[label] = j + f + o
        print(f"| {label} | {frames / 1e6:.0f} M | {gb(j)} | {gb(f)} | {gb(o)} | {gb(j + f + o)} |")
    total = totals["100k videos"]
    print("\n### Per node and staging time\n")
    print(
        "Copier rate = min(1 / (1/read + 1/write), SHA-256): one copier per node reads and writes 16 MiB "
        "blocks in turn while a helper thread hashes each block during its write and the next read; "
        "read at the NIC rate (HDR, "
        f"{NIC['InfiniBand HDR (200 Gb/s)'] / 1e9:.0f} GB/s, an upper bound), SHA-256 {sha / 1e9:.2f} GB/s "
        "(measured, one core).\n"
    )
    print("| nodes | bytes per node (100k videos) | " + " | ".join(f"staging, {d}" for d in DISKS) + " |")
    print("|---|---|" + "---|" * len(DISKS))
    for n in NODE_COUNTS:
        per = total / n
        cells = []
        for w in DISKS.values():
            rate = min(1 / (1 / NIC["InfiniBand HDR (200 Gb/s)"] + 1 / w), sha)
            cells.append(f"{hms(per / rate)} ({rate / 1e9:.2f} GB/s)")
        print(f"| {n} | {gb(per)} | " + " | ".join(cells) + " |")

    per_sample = 2 * (JPEG_BYTES + overhead) + 2 * (K - 1) * flow_pair / 2
    samples = TRAIN_VIDEOS * EPOCHS
    print(f"\n### Per-GPU sample rates (global batch {GLOBAL_BATCH}, k = {K})\n")
    print(
        f"A sample reads {per_sample / 1e3:.0f} KB (2 JPEGs, {K - 1} forward + {K - 1} backward flows), "
        f"decodes 2 JPEGs; the seed's schedule is {samples / 1e6:.0f} M samples "
        f"({EPOCHS} epochs x {TRAIN_VIDEOS // 1000}k videos).\n"
    )
    print("| GPUs | batch per GPU | rate per GPU for the schedule in 24 h | in 7 days |")
    print("|---|---|---|---|")
    for g in GPU_COUNTS:
        print(
            f"| {g} | {GLOBAL_BATCH // g} | {samples / DAY / g:,.1f} samples/s | {samples / (7 * DAY) / g:,.1f} "
            "samples/s |"
        )
    print(
        "\nWhat each part must deliver per GPU to keep up with a GPU at a documented rate "
        f"(decode: {decode:.0f} BDD-sized 720p JPEGs/s per core, measured; pipeline: {PIPELINE_VS_DECODE} of "
        "that rate per sample pair, measured):\n"
    )
    print(
        "| GPU rate (samples/s/GPU) | local read per GPU | decode cores per GPU | pipeline cores per GPU |"
        " steps/s at 16 GPUs | at 256 GPUs |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in GPU_RATES.items():
        print(
            f"| {name}: {r:,.0f} | {r * per_sample / 1e6:,.0f} MB/s | {2 * r / decode:.1f} | "
            f"{r / (PIPELINE_VS_DECODE * decode / 2):.1f} | {r / (GLOBAL_BATCH / 16):.1f} | "
            f"{r / (GLOBAL_BATCH / 256):.1f} |"
        )

    print("\n### Allreduce per step\n")
    print(
        f"Gradients: {m['model_k6']['trainable_params'] / 1e6:.1f} M trainable parameters x 4 B = "
        f"{grad / 1e6:.1f} MB per step (measured from the k = 6 model). A ring allreduce moves "
        "2(G-1)/G of it in and out of every rank; hierarchically (within a node first) about twice "
        "the gradient crosses each node's network link per step.\n"
    )
    print("| GPUs | ring bytes per GPU per step | " + " | ".join(f"node link, {n}" for n in GPU_RATES) + " |")
    print("|---|---|" + "---|" * len(GPU_RATES))
    for g in GPU_COUNTS:
        cells = [f"{2 * grad * r / (GLOBAL_BATCH / g) / 1e9:,.1f} GB/s" for r in GPU_RATES.values()]
        print(f"| {g} | {2 * (g - 1) / g * grad / 1e6:,.0f} MB | " + " | ".join(cells) + " |")
    print(
        "\nGPUs beyond which the gradient traffic alone exceeds a node's link "
        "(G_max = batch x link / (2 x gradient x rate)):\n"
    )
    print("| | " + " | ".join(NIC) + " |")
    print("|---|" + "---|" * len(NIC))
    for name, r in GPU_RATES.items():
        print(f"| {name} | " + " | ".join(f"{GLOBAL_BATCH * bw / (2 * grad * r):,.0f}" for bw in NIC.values()) + " |")
    bn = m["model_k6"]["bn_layers_all"]
    bn_t = m["model_k6"]["bn_layers_trainable"]
    colls = 2 * bn + 2 * bn_t
    print(
        f"\nSyncBN: {bn} batch-norm layers ({bn_t} trainable) synchronise statistics per view: "
        f"{colls} small collectives per step (2 views x {bn} forward + 2 x {bn_t} backward)."
    )
    for name, r in GPU_RATES.items():
        step = (GLOBAL_BATCH / 256) / r
        print(
            f"At 256 GPUs and {name} ({r:,.0f}/s) a step computes for {step * 1e3:.1f} ms: a collective "
            f"latency above {step / colls * 1e6:.0f} us makes SyncBN alone longer than the compute."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Optical flow: RAFT (torchvision) and OpenCV DIS estimators, chaining, occlusion masks, IO, pictures.

Modules:

- :mod:`flow.ops` — batched torch operations: ``chain_flows`` / ``chain_backward`` (composite flow
  over a clip), ``fb_consistency`` (masks, ``seed`` or ``unflow`` rule), ``upsample_flow`` /
  ``resize_flow`` / ``shard_flow_to_full`` / ``full_flow_to_shard``, ``sample_at``, ``warp_image``.
- :mod:`flow.estimators` — ``make_estimator("raft-small" | "raft-large" | "dis", ...)``: one
  interface returning full-resolution and 1/8-resolution flow for batches of frame pairs.
- :mod:`flow.raft_weights` — official princeton-vl checkpoints <-> torchvision RAFT (strict).
- :mod:`flow.io` — Middlebury ``.flo`` and the seed's per-video ``.pth`` files.
- Commands (``python -m flow``): ``compute`` (flows into shards, mpirun, resumable), ``viz``
  (PNGs), ``evaluate`` (EPE and mask precision/recall on the synthetic world).
"""

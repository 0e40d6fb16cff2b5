"""Resuming a run: which config changes keep the trained weights (:data:`RESUMABLE_CHANGES`), and
the one-line refusal of any other change (:func:`check_resume_compatible`).
"""

from __future__ import annotations

from typing import Any, List, Mapping

from pixpro_of.config.schema import TrainConfig
from plumbing.errors import UserError

# Keys that may change between a run's jobs without changing the trained weights (shard paths
# change when a job stages them to node-local storage; a different data size is caught by the
# steps-per-epoch check on resume).
RESUMABLE_CHANGES = (
    "stop.",
    "log.",
    "data.shards",
    "data.num_workers",
    "data.prefetch_factor",
    "checkpoint.keep",
    "run.threads",
    "run.device",
    "run.max_steps",
    "data.raft_chunk",
    "data.raft_weights",
    "data.positives_on",
    "data.decode_chunk",
    "data.on_bad_sample",
    "data.bad_sample_budget",
    "checkpoint.every_minutes",
    "optim.tf32",  # when to write, and fp32 rounding on tensor cores
    # The backend and world size may change between links of a run (see ARCHITECTURE.md,
    # "Resuming with another world size"); the global batch may not.
    "dist.",
)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two ``to_dict()`` trees."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_keys(a, b, prefix + key + ".")
        elif a != b:
            out.append(prefix + key)
    return out


def check_resume_compatible(saved: Mapping[str, Any], cfg: TrainConfig, where: str) -> None:
    """Refuse to resume a run with a config that would change its trained weights."""
    bad = [k for k in changed_keys(saved, cfg.to_dict()) if not k.startswith(RESUMABLE_CHANGES)]
    if bad:
        shown = ", ".join(f"{k}: {_lookup(saved, k)!r} -> {_lookup(cfg.to_dict(), k)!r}" for k in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(
            f"{where}: this run was started with a different config ({shown}{more}); "
            "use a new run directory or the same settings"
        )


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node

"""The smoke's report, pure: the ranks' start and end records in, one line per check and the verdict out."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from pixpro_of.smoke.checks import RANK_BATCH, STEPS

CHECKS = ("imports", "gpus", "allreduce", "scratch", "train", "stop/resume")


def _ranges(ranks: Sequence[int]) -> str:
    rs = sorted(ranks)
    parts, start = [], None
    for i, r in enumerate(rs):
        if start is None:
            start = r
        if i + 1 == len(rs) or rs[i + 1] != r + 1:
            parts.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ("rank " if len(rs) == 1 else "ranks ") + ",".join(parts)


def _by_host(starts: Dict[int, Dict], describe) -> str:
    groups: Dict[str, List[Tuple[str, int]]] = {}
    for r, rec in sorted(starts.items()):
        groups.setdefault(describe(rec), []).append((rec["host"], r))
    parts = []
    for desc, members in groups.items():
        hosts = sorted({h for h, _ in members})
        parts.append(f"{', '.join(hosts)} ({_ranges([r for _, r in members])}): {desc}")
    return "; ".join(parts)


def _imports_desc(rec: Dict) -> str:
    imp = rec["imports"]
    found = ", ".join(f"{k} {v}" for k, v in imp["found"].items())
    return f"{imp['python']} {imp['python_version']}, {found}"


def line_imports(starts: Dict[int, Dict], expected: int, world: Optional[int] = None) -> Tuple[bool, str]:
    missing = {r: rec["imports"]["missing"] for r, rec in starts.items() if rec["imports"]["missing"]}
    if missing:
        r, miss = sorted(missing.items())[0]
        mod, why = next(iter(miss.items()))
        more = f" (and {len(missing) - 1} more rank(s))" if len(missing) > 1 else ""
        return False, (
            f"imports: FAIL: {mod} on {starts[r]['host']} (rank {r}, {starts[r]['imports']['python']}): {why}{more}"
        )
    absent = [r for r in range(expected) if r not in starts]
    if absent and world in (None, expected):  # another world size is the allreduce line's finding
        return False, f"imports: FAIL: no report from {_ranges(absent)} of {expected} (did they start?)"
    hosts = len({rec["host"] for rec in starts.values()})
    return True, f"imports: OK: {hosts} host(s): {_by_host(starts, _imports_desc)}"


def _gpus_desc(rec: Dict) -> str:
    g = rec["gpus"]
    if g["count"] == 0:
        return "0 GPUs (CPU ranks)"
    names: Dict[str, int] = {}
    for n in g["names"]:
        names[n] = names.get(n, 0) + 1
    return (
        f"{g['count']} GPU{'s' if g['count'] != 1 else ''} each ("
        + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in names.items())
        + ")"
    )


def line_gpus(starts: Dict[int, Dict], gpus_per_node: int) -> Tuple[bool, str]:
    if not starts:
        return False, "gpus: FAIL: no rank reported"
    if gpus_per_node == 0:
        return True, f"gpus: OK: {_by_host(starts, _gpus_desc)}"
    blind = sorted(r for r, rec in starts.items() if rec["gpus"]["count"] == 0)
    if blind:
        rec = starts[blind[0]]
        why = f" ({rec['gpus']['error']})" if rec["gpus"].get("error") else ""
        return False, (
            f"gpus: FAIL: {_ranges(blind)} on {rec['host']} see no GPU{why}; the job asked for "
            f"{gpus_per_node} per node (CUDA_VISIBLE_DEVICES={rec['gpus'].get('visible')})"
        )
    used: Dict[Tuple[str, str], List[int]] = {}
    for r, rec in starts.items():
        g = rec["gpus"]
        uuid = g["uuids"][rec["local_rank"] % g["count"]] if g.get("uuids") else ""
        if uuid:
            used.setdefault((rec["host"], uuid), []).append(r)
    shared = [(k, v) for k, v in used.items() if len(v) > 1]
    if shared:
        (host, _), ranks = shared[0]
        return False, f"gpus: FAIL: {_ranges(ranks)} on {host} would train on the same GPU"
    return True, f"gpus: OK: {_by_host(starts, _gpus_desc)}"


def line_scratch(starts: Dict[int, Dict]) -> Tuple[bool, str]:
    bad = sorted((r for r, rec in starts.items() if rec["scratch"].get("error")))
    if bad:
        rec = starts[bad[0]]
        return False, f"scratch: FAIL: {rec['host']} (rank {bad[0]}): {rec['scratch']['error']}"
    if not starts:
        return False, "scratch: FAIL: no rank reported"
    per_host: Dict[str, Dict] = {}
    for _, rec in sorted(starts.items()):
        per_host.setdefault(rec["host"], rec["scratch"])
    parts = [
        f"{h}: {s['dir']} ({s['shards']} shard(s), {s['bytes'] / 2**20:.1f} MiB staged; "
        f"{s['free'] / 2**30:.1f} GiB free)"
        for h, s in per_host.items()
    ]
    return True, "scratch: OK: " + "; ".join(parts)


def line_allreduce(ends: Dict[int, Dict], expected: int) -> Tuple[bool, str]:
    errs = sorted((r, e["allreduce"]) for r, e in ends.items() if e.get("allreduce", {}).get("error"))
    if errs:
        return False, f"allreduce: FAIL: {errs[0][1]['error']}"
    zero = ends.get(0, {}).get("allreduce")
    if not zero or "busbw" not in zero:
        return False, "allreduce: FAIL: rank 0 has no result"
    absent = [r for r in range(expected) if "allreduce" not in ends.get(r, {})]
    if absent:
        return False, f"allreduce: FAIL: no result from {_ranges(absent)}"
    n = zero["world"]
    bw = f"bus bandwidth {zero['busbw']:.2f} GB/s" if n > 1 else "1 rank: no transfer"
    return True, (
        f"allreduce: OK: {n} rank{'s' if n != 1 else ''}, {zero['library']}, sums right on every rank; "
        f"{zero['mib']} MiB "
        f"in {zero['seconds'] * 1e3:.1f} ms: {bw} (algorithm {zero['algbw']:.2f} GB/s)"
    )


def line_train(ends: Dict[int, Dict], preset: str, rank_batch: int = RANK_BATCH) -> Tuple[bool, str]:
    t = ends.get(0, {}).get("train")
    if not t:
        err = ends.get(0, {}).get("errors", {}).get("train")
        if (
            err is None
            and "allreduce" in ends.get(0, {}).get("errors", {})
            or ends.get(0, {}).get("allreduce", {}).get("error")
        ):
            err = "not run: the allreduce failed"
        return False, f"train: FAIL: {err or 'rank 0 has no result'}"
    if t["steps"] < STEPS:
        why = f": stopped by {t['reason']}" if t.get("reason") else f" (exit {t['rc']})"
        return False, f"train: FAIL: {t['steps']} of {STEPS} steps in {t['seconds']} s{why}"
    loss = t.get("loss") or [float("nan")] * 2
    if not all(abs(v) < float("inf") for v in loss):
        return False, f"train: FAIL: the loss is not finite ({loss[0]} -> {loss[1]})"
    return True, (
        f"train: OK: {STEPS} steps of {preset}, global batch {t['batch']} ({rank_batch} per rank), "
        f"{t['samples_per_s']:.1f} samples/s (median of steps {t['median_from']}-{STEPS}), "
        f"loss {loss[0]:.3f} -> {loss[1]:.3f}"
    )


def line_stop(ends: Dict[int, Dict]) -> Tuple[bool, str]:
    s = ends.get(0, {}).get("stop")
    if not s:
        err = ends.get(0, {}).get("errors", {}).get("stop/resume")
        return False, f"stop/resume: FAIL: {err or 'not run: the training did not run'}"
    head = (
        f"{s['signal']} sent to rank 0 after step {s['sent_at']}"
        if s.get("sent_at") is not None
        else f"no {s['signal']} sent (the training ended before step {STEPS})"
    )
    if s.get("rc1") != 75:
        return False, f"stop/resume: FAIL: {head}: the trainer exited {s.get('rc1')}, not 75 (checkpointed)"
    if s.get("rc2") != 0 or not s.get("done") or s.get("resumed_from") is None:
        return False, (
            f"stop/resume: FAIL: {head}: checkpointed (exit 75), but the resume exited {s.get('rc2')} "
            f"(resumed from step {s.get('resumed_from')}, done marker {'yes' if s.get('done') else 'no'})"
        )
    return True, (
        f"stop/resume: OK: {head}: checkpoint {s.get('checkpoint') or '?'}, exit 75; resumed from step "
        f"{s['resumed_from']} to step {s['last_step']}, exit 0 (done marker) in {s['seconds']} s"
    )


def compose(
    starts: Dict[int, Dict],
    ends: Dict[int, Dict],
    expected: int,
    gpus_per_node: int,
    preset: str,
    seconds: float,
    hung: Tuple[str, str] = ("", ""),
    rank_batch: int = RANK_BATCH,
) -> Tuple[bool, List[str]]:
    """The six check lines and the verdict line from the ranks' records. ``hung``: (check, why) of
    a phase that never ended (the deadline came first): its failed line says why."""
    world = ends.get(0, {}).get("allreduce", {}).get("world")
    results = [
        line_imports(starts, expected, world),
        line_gpus(starts, gpus_per_node),
        line_allreduce(ends, expected),
        line_scratch(starts),
        line_train(ends, preset, rank_batch),
        line_stop(ends),
    ]
    results = [
        (False, f"{name}: FAIL: {hung[1]}") if (not ok and name == hung[0]) else (ok, text)
        for (ok, text), name in zip(results, CHECKS)
    ]
    lines = [text for _, text in results]
    passed = sum(ok for ok, _ in results)
    took = f"{int(seconds) // 60} min {int(seconds) % 60} s"
    if passed == len(CHECKS):
        lines.append(f"smoke: PASS ({passed} of {len(CHECKS)} checks, {took})")
        return True, lines
    first = next(text for ok, text in results if not ok)
    name, _, rest = first.partition(": FAIL: ")
    lines.append(f"smoke: FAIL: {name}: {rest} ({passed} of {len(CHECKS)} checks passed, {took})")
    return False, lines

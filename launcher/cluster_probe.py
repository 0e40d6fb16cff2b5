"""What a cluster says about itself, as profile lines: the scheduler's own commands and their parsers."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from launcher.clusters import format_hms
from plumbing.errors import UserError

Ask = Callable[[List[str]], str]


@dataclass(frozen=True)
class Line:
    """One profile key: learned (``value`` and where it came from) or not (an example, written commented out)."""

    key: str
    value: object
    note: str
    learned: bool = True


def missing(key: str, example: object, why: str) -> Line:
    return Line(key, example, why, learned=False)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _mode(values: Sequence) -> Tuple[Any, int]:
    """The most common value (the smaller one on a tie) and how many have it."""
    counts = Counter(values)
    best = max(counts.items(), key=lambda kv: (kv[1], -kv[0] if isinstance(kv[0], (int, float)) else 0))
    return best


# --------------------------------------------------------------------------- SLURM

SLURM_PARTITIONS = ["scontrol", "show", "partition", "-o"]


def slurm_nodes_argv(partition: str) -> List[str]:
    return ["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%c|%m|%G"]


def parse_key_values(line: str) -> Dict[str, str]:
    """``Key=Value Key2=Value2`` (scontrol's one-line form) -> dict."""
    return dict(re.findall(r"(\S+?)=(\S*)", line))


def parse_slurm_partitions(text: str) -> Dict[str, Dict[str, str]]:
    """``scontrol show partition -o`` -> {partition: {key: value}}."""
    out = {}
    for line in text.splitlines():
        if line.startswith("PartitionName="):
            kv = parse_key_values(line)
            out[kv["PartitionName"]] = kv
    return out


def slurm_gpus(gres: str) -> int:
    """GPUs in a GRES string: ``gpu:a100:4(S:0-1),mps:400`` -> 4; ``(null)`` -> 0."""
    plain = re.sub(r"\([^)]*\)", "", gres)
    total = 0
    for item in plain.split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_sinfo_nodes(text: str) -> List[Dict[str, Any]]:
    """``sinfo -h -N -o %N|%c|%m|%G`` -> [{name, cpus, memory_mb, gres, gpus}], one per node."""
    nodes, seen = [], set()
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or parts[0] in seen:
            continue
        seen.add(parts[0])
        name, cpus, mem, gres = parts
        nodes.append(
            {
                "name": name,
                "cpus": int(cpus) if cpus.isdigit() else 0,
                "memory_mb": int(mem) if mem.isdigit() else 0,
                "gres": gres,
                "gpus": slurm_gpus(gres),
            }
        )
    return nodes


def slurm_seconds(text: str) -> Optional[int]:
    """A SLURM time (``7-00:00:00``, ``12:00:00``, ``30:00`` = MM:SS, ``90`` = minutes) -> seconds;
    None for ``UNLIMITED``/``NONE``/``INFINITE``."""
    t = text.strip()
    if not t or t.upper() in ("UNLIMITED", "NONE", "INFINITE", "N/A"):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
    parts = [int(p) for p in t.split(":")]
    if len(parts) == 3:
        secs = parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 2:
        secs = parts[0] * 60 + parts[1] if not days else parts[0] * 3600 + parts[1] * 60
    else:
        secs = parts[0] * 60 if not days else parts[0] * 3600
    return days * 86400 + secs


def _choose_queue(names: Sequence[str], queue: Optional[str], default: Optional[str], what: str) -> Tuple[str, str]:
    """(queue, how it was chosen); a UserError naming the queues there are."""
    if queue:
        if queue not in names:
            raise UserError(f"--queue {queue}: no such {what} (there are: {', '.join(names) or 'none'})")
        return queue, "--queue"
    if default:
        return default, "default"
    if len(names) == 1:
        return names[0], "only"
    raise UserError(f"this cluster has no default {what}: add --queue (one of: {', '.join(names)})")


def _gpu_note(nodes: List[Dict[str, Any]], gpus: int, count: int, how: str) -> str:
    if gpus == 0 and count == len(nodes):
        return f"{how}: no GPUs on any of the {len(nodes)} nodes"
    return f"{how} on {count} of {len(nodes)} nodes"


def discover_slurm(ask: Ask, queue: Optional[str]) -> Tuple[str, List[Line]]:
    parts = parse_slurm_partitions(ask(SLURM_PARTITIONS))
    default = next((n for n, kv in parts.items() if kv.get("Default") == "YES"), None)
    name, how = _choose_queue(list(parts), queue, default, "partition")
    part = parts[name]
    nodes = parse_sinfo_nodes(ask(slurm_nodes_argv(name)))
    if not nodes:
        raise UserError(f"partition {name} has no nodes (sinfo -N -p {name} lists none)")
    chose = {
        "--queue": "--queue",
        "default": "scontrol show partition: Default=YES",
        "only": "scontrol show partition: the only partition",
    }[how]
    lines = [Line("queue", name, f"{chose} (partition {name})")]
    gpus, n_gpu = _mode([n["gpus"] for n in nodes])
    gres = next(n["gres"] for n in nodes if n["gpus"] == gpus)
    lines.append(Line("gpus_per_node", gpus, _gpu_note(nodes, gpus, n_gpu, f"sinfo: Gres={gres}")))
    cpus, n_cpu = _mode([n["cpus"] for n in nodes])
    lines.append(Line("cpus_per_node", cpus, f"sinfo: CPUs={cpus} on {n_cpu} of {len(nodes)} nodes"))
    mem, _ = _mode([n["memory_mb"] for n in nodes])
    total = part.get("TotalNodes", str(len(nodes)))
    max_nodes = part.get("MaxNodes", "UNLIMITED")
    if max_nodes.isdigit():
        lines.append(Line("max_nodes", int(max_nodes), f"scontrol show partition: MaxNodes={max_nodes}"))
    else:
        lines.append(
            Line(
                "max_nodes",
                int(total) if total.isdigit() else len(nodes),
                f"scontrol show partition: MaxNodes={max_nodes}, TotalNodes={total}",
            )
        )
    lines += _walltimes(
        part.get("MaxTime", "UNLIMITED"),
        "scontrol show partition: MaxTime",
        part.get("DefaultTime", "NONE"),
        "scontrol show partition: DefaultTime",
    )
    over, excl_user = part.get("OverSubscribe", "NO"), part.get("ExclusiveUser", "NO")
    if over.startswith("EXCLUSIVE"):
        lines.append(Line("exclusive", True, f"scontrol show partition: OverSubscribe={over}: nodes are given whole"))
    else:
        who = "one user's jobs share a node" if excl_user == "YES" else "jobs share nodes"
        lines.append(
            Line(
                "exclusive",
                False,
                f"scontrol show partition: OverSubscribe={over} ExclusiveUser={excl_user}: {who}; "
                "a job gets the CPUs and GPUs it asks for (true adds --exclusive: whole nodes)",
            )
        )
    lines.append(
        Line(
            "warning_signal",
            "USR2",
            "SLURM: --signal=B:USR2@warning_lead_s before the time limit, "
            "trapped by the job script (checkpoint, then requeue)",
        )
    )
    lines.append(
        Line("can_requeue", True, "SLURM: a job requeues itself (scontrol requeue; the script asks --requeue)")
    )
    desc = f"SLURM partition {name}: {_count(len(nodes), 'node')}, {gpus} GPUs, {cpus} CPUs, {mem // 1024} GiB each"
    return desc, lines


def _walltimes(
    most_text: str,
    most_src: str,
    default_text: str,
    default_src: str,
    parse: Callable[[str], Optional[int]] = slurm_seconds,
) -> List[Line]:
    """max_walltime and default_walltime from the scheduler's limit and default (``*_src``: which command and key)."""
    lines = []
    most, default = parse(most_text), parse(default_text)
    said_most = f"{most_src}={most_text}" if most_text else f"{most_src}: not set"
    said_default = f"{default_src}={default_text}" if default_text else f"{default_src}: not set"
    if most:
        lines.append(Line("max_walltime", format_hms(most), said_most))
    else:
        lines.append(
            missing(
                "max_walltime",
                "24:00:00",
                f"{said_most}: the launcher needs a bound (default 24:00:00): your site's job time limit",
            )
        )
    if default and (not most or default <= most):
        lines.append(Line("default_walltime", format_hms(default), said_default))
    else:
        lines.append(
            missing(
                "default_walltime",
                "04:00:00",
                f"{said_default}: the walltime of a job without --walltime (default 01:00:00)",
            )
        )
    return lines


# --------------------------------------------------------------------------- PBS

PBS_SERVER = ["qstat", "-Bf"]
PBS_QUEUES = ["qstat", "-Qf"]
PBS_NODES = ["pbsnodes", "-av"]


def parse_pbs_blocks(text: str, header: str) -> Dict[str, Dict[str, str]]:
    """``qstat -Qf``/``-Bf`` (header ``Queue:``/``Server:``) or ``pbsnodes -av`` (header ``""``: a
    line at column 0) -> {name: {attribute: value}}; tab-indented lines continue the last value."""
    out: Dict[str, Dict[str, str]] = {}
    cur: Optional[Dict[str, str]] = None
    last = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw.startswith("\t") and cur is not None and last:
            cur[last] += raw.strip()
            continue
        if not raw[0].isspace():
            name = raw[len(header) :].strip() if header and raw.startswith(header) else raw.strip()
            cur = out.setdefault(name, {})
            last = None
            continue
        if cur is not None and "=" in raw:
            key, value = raw.split("=", 1)
            last = key.strip()
            cur[last] = value.strip()
    return out


def pbs_seconds(text: str) -> Optional[int]:
    """A PBS duration ``[[HH:]MM:]SS`` -> seconds; None when empty."""
    t = text.strip()
    if not t:
        return None
    secs = 0
    for p in t.split(":"):
        secs = secs * 60 + int(float(p))
    return secs or None


def discover_pbs(ask: Ask, queue: Optional[str]) -> Tuple[str, List[Line]]:
    server = next(iter(parse_pbs_blocks(ask(PBS_SERVER), "Server:").values()), {})
    queues = parse_pbs_blocks(ask(PBS_QUEUES), "Queue:")
    name, how = _choose_queue(list(queues), queue, server.get("default_queue"), "queue")
    q = queues[name]
    chose = {
        "--queue": "--queue",
        "default": f"qstat -Bf: default_queue = {name}",
        "only": "qstat -Qf: the only queue",
    }[how]
    lines = [Line("queue", name, chose + (f" (queue_type {q['queue_type']})" if q.get("queue_type") else ""))]
    nodes = parse_pbs_blocks(ask(PBS_NODES), "")
    in_queue = {n: a for n, a in nodes.items() if a.get("queue", name) == name}
    if not in_queue:
        raise UserError(f"pbsnodes -av: no node serves queue {name}")
    ngpus = [int(a.get("resources_available.ngpus", "0") or 0) for a in in_queue.values()]
    ncpus = [int(a.get("resources_available.ncpus", "0") or 0) for a in in_queue.values()]
    n = len(in_queue)
    gpus, n_gpu = _mode(ngpus)
    if gpus == 0 and n_gpu == n:
        lines.append(Line("gpus_per_node", 0, f"pbsnodes: no resources_available.ngpus on any of the {n} nodes"))
    else:
        lines.append(
            Line("gpus_per_node", gpus, f"pbsnodes: resources_available.ngpus = {gpus} on {n_gpu} of {n} nodes")
        )
    cpus, n_cpu = _mode(ncpus)
    lines.append(Line("cpus_per_node", cpus, f"pbsnodes: resources_available.ncpus = {cpus} on {n_cpu} of {n} nodes"))
    nodect = q.get("resources_max.nodect") or server.get("resources_max.nodect")
    if nodect and nodect.isdigit():
        lines.append(Line("max_nodes", int(nodect), f"qstat -Qf: resources_max.nodect = {nodect}"))
    else:
        lines.append(Line("max_nodes", n, f"pbsnodes: {n} nodes serve queue {name} (no resources_max.nodect)"))
    where = {
        k: ("qstat -Qf" if q.get(k) else "qstat -Bf") for k in ("resources_max.walltime", "resources_default.walltime")
    }
    lines += _walltimes(
        q.get("resources_max.walltime") or server.get("resources_max.walltime", ""),
        f"{where['resources_max.walltime']}: resources_max.walltime",
        q.get("resources_default.walltime") or server.get("resources_default.walltime", ""),
        f"{where['resources_default.walltime']}: resources_default.walltime",
        pbs_seconds,
    )
    sharing = Counter(a.get("sharing", "default_shared") for a in in_queue.values())
    share, n_share = sharing.most_common(1)[0]
    if "excl" in share and share != "ignore_excl":
        lines.append(
            Line(
                "place", "scatter:excl", f"pbsnodes: sharing = {share} on {n_share} of {n} nodes: nodes are given whole"
            )
        )
    else:
        lines.append(
            Line(
                "place",
                "scatter",
                f"pbsnodes: sharing = {share} on {n_share} of {n} nodes: jobs share nodes; "
                '"scatter:excl" asks for whole nodes',
            )
        )
    lines.append(
        Line(
            "can_requeue",
            False,
            "PBS: a job cannot requeue itself (qrerun needs an operator): runs "
            "continue through a chain of afterany-dependent jobs",
        )
    )
    desc = f"PBS queue {name}: {_count(n, 'node')}, {gpus} GPUs, {cpus} CPUs each"
    return desc, lines


# --------------------------------------------------------------------------- Grid Engine

SGE_QUEUES = ["qconf", "-sql"]
SGE_PES = ["qconf", "-spl"]
SGE_COMPLEXES = ["qconf", "-sc"]
SGE_HOSTS = ["qhost", "-q", "-F"]


def sge_queue_argv(queue: str) -> List[str]:
    return ["qconf", "-sq", queue]


def sge_pe_argv(pe: str) -> List[str]:
    return ["qconf", "-sp", pe]


def parse_sge_config(text: str) -> Dict[str, str]:
    """``qconf -sq``/``-sp`` (``key  value``, ``\\`` continues a line) -> {key: value}."""
    out, last, cont = {}, None, False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        text_part = line[:-1].rstrip() if line.endswith("\\") else line
        if cont and last:
            out[last] += text_part.strip()
        else:
            parts = text_part.split(None, 1)
            last = parts[0]
            out[last] = parts[1].strip() if len(parts) > 1 else ""
        cont = line.endswith("\\")
    return out


def sge_values(value: str) -> Tuple[str, Dict[str, str]]:
    """``1,[host1=4],[@gpu=8]`` -> ("1", {"host1": "4", "@gpu": "8"}): the value and its per-host overrides."""
    overrides = dict(re.findall(r"\[([^=\]]+)=([^\]]*)\]", value))
    base = re.sub(r",?\[[^\]]*\]", "", value).strip().strip(",")
    return base, overrides


def parse_sge_complexes(text: str) -> List[Dict[str, str]]:
    """``qconf -sc`` -> [{name, shortcut, type, relop, requestable, consumable, default, urgency}]."""
    cols = ("name", "shortcut", "type", "relop", "requestable", "consumable", "default", "urgency")
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= len(cols):
            out.append(dict(zip(cols, parts)))
    return out


def parse_qhost(text: str) -> Dict[str, Dict[str, Any]]:
    """``qhost -q -F`` -> {host: {ncpu, queues: [names], resources: {name: value}}} (``global`` left out)."""
    hosts: Dict[str, Dict[str, Any]] = {}
    cur = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("HOSTNAME") or line.startswith("-"):
            continue
        if not line[0].isspace():
            parts = line.split()
            if parts[0] == "global":
                cur = None
                continue
            cur = hosts.setdefault(
                parts[0], {"ncpu": int(parts[2]) if parts[2].isdigit() else 0, "queues": [], "resources": {}}
            )
            continue
        if cur is None:
            continue
        word = line.split()[0]
        m = re.match(r"^(\w\w):([^=]+)=(.*)$", word)
        if m:
            cur["resources"][m.group(2)] = m.group(3)
        else:
            cur["queues"].append(word)
    return hosts


def _sge_pe_rank(name: str, pe: Dict[str, str]) -> Tuple[int, int, str]:
    """Sort key: a PE that spreads ranks over nodes and lets mpirun start them (control_slaves) first."""
    rule = pe.get("allocation_rule", "")
    spreads = rule in ("$fill_up", "$round_robin") or rule.isdigit()
    return (0 if spreads else 1, 0 if pe.get("control_slaves", "").upper() == "TRUE" else 1, name)


def discover_sge(ask: Ask, queue: Optional[str]) -> Tuple[str, List[Line]]:
    names = [l.strip() for l in ask(SGE_QUEUES).splitlines() if l.strip()]
    name, how = _choose_queue(names, queue, "all.q" if "all.q" in names else None, "cluster queue")
    chose = {
        "--queue": "--queue",
        "default": "qconf -sql: all.q, the default cluster queue",
        "only": "qconf -sql: the only cluster queue",
    }[how]
    lines = [Line("queue", name, chose)]
    q = parse_sge_config(ask(sge_queue_argv(name)))
    hosts = {h: a for h, a in parse_qhost(ask(SGE_HOSTS)).items() if name in a["queues"]}
    n = len(hosts)
    # GPUs: a consumable complex whose name says gpu, counted on each host of the queue
    gpu_cx = [
        c
        for c in parse_sge_complexes(ask(SGE_COMPLEXES))
        if "gpu" in c["name"].lower()
        and c["consumable"].upper() in ("YES", "JOB", "HOST")
        and c["type"] in ("INT", "DOUBLE")
    ]
    if gpu_cx:
        cx = gpu_cx[0]["name"]
        counts = [int(float(a["resources"].get(cx, "0") or 0)) for a in hosts.values()] or [0]
        gpus, n_gpu = _mode(counts)
        lines.append(Line("gpu_resource", cx, f"qconf -sc: {cx} is a consumable complex ({gpu_cx[0]['consumable']})"))
        lines.append(Line("gpus_per_node", gpus, f"qhost -F: {cx}={gpus} on {n_gpu} of {n} hosts of {name}"))
    else:
        gpus = 0
        lines.append(
            Line("gpus_per_node", 0, "qconf -sc: no consumable complex named like gpu: jobs cannot ask for GPUs")
        )
    ncpu = [int(a["ncpu"]) for a in hosts.values()]
    if ncpu:
        cpus, n_cpu = _mode(ncpu)
        lines.append(Line("cpus_per_node", cpus, f"qhost: NCPU={cpus} on {n_cpu} of {n} hosts of {name}"))
    else:
        cpus = 0
        lines.append(missing("cpus_per_node", 32, f"qhost -q: no host lists queue {name}: CPUs of one node"))
    if n:
        lines.append(Line("max_nodes", n, f"qhost -q: {n} hosts serve {name}"))
    slots, per_host = sge_values(q.get("slots", ""))
    pe_base, pe_over = sge_values(q.get("pe_list", "NONE"))
    queue_pes = [p for p in re.split(r"[\s,]+", " ".join([pe_base, *pe_over.values()])) if p and p != "NONE"]
    known = [l.strip() for l in ask(SGE_PES).splitlines() if l.strip()]
    pes = {p: parse_sge_config(ask(sge_pe_argv(p))) for p in dict.fromkeys(queue_pes) if p in known}
    if pes:
        best = sorted(pes, key=lambda p: _sge_pe_rank(p, pes[p]))[0]
        pe = pes[best]
        lines.append(
            Line(
                "parallel_env",
                best,
                f"qconf -sq {name}: pe_list {q.get('pe_list')}; qconf -sp {best}: "
                f"allocation_rule {pe.get('allocation_rule')}, control_slaves {pe.get('control_slaves')}; "
                f"slots {q.get('slots')} per host",
            )
        )
    else:
        lines.append(
            missing(
                "parallel_env",
                "mpi",
                f"qconf -sq {name}: pe_list {q.get('pe_list', 'NONE')}: no parallel "
                "environment: a job of several ranks needs one (or node_resource)",
            )
        )
    lines.append(
        missing(
            "node_resource",
            "",
            "Grid Engine sites with an exclusive-node resource (ABCI rt_F, TSUBAME "
            "f_node) ask for nodes with it instead of a parallel environment",
        )
    )
    h_rt = q.get("h_rt", "INFINITY")
    lines += _walltimes(
        h_rt,
        f"qconf -sq {name}: h_rt",
        "",
        "Grid Engine: default h_rt (sge_request)",
        lambda t: None if t.upper() == "INFINITY" else pbs_seconds(t),
    )
    notify = pbs_seconds(q.get("notify", "")) if q.get("notify") else None
    if notify:
        lines.append(
            Line(
                "warning_signal",
                "USR2",
                f"qconf -sq {name}: notify {q['notify']}: with -notify, Grid Engine "
                f"sends SIGUSR2 {notify} s before it kills (qdel) and the job checkpoints",
            )
        )
    else:
        lines.append(
            missing(
                "warning_signal",
                "USR2",
                f"qconf -sq {name}: notify {q.get('notify', 'not set')}: no warning before a kill",
            )
        )
    tmpdir = q.get("tmpdir", "")
    if tmpdir and tmpdir != "NONE":
        lines.append(
            Line(
                "local_dir_var",
                "TMPDIR",
                f"qconf -sq {name}: tmpdir {tmpdir}: Grid Engine sets $TMPDIR to a job directory under it on each node",
            )
        )
    lines.append(Line("can_requeue", False, "Grid Engine: runs continue through a chain of -hold_jid jobs"))
    desc = f"Grid Engine queue {name}: {_count(n, 'host')}, {gpus} GPUs, {cpus} CPUs each"
    return desc, lines


# --------------------------------------------------------------------------- PJM


def discover_pjm(ask: Ask, queue: Optional[str]) -> Tuple[str, List[Line]]:
    """PJM: from the options alone (its resource groups are site configuration that users cannot list)."""
    lines = []
    if queue:
        lines.append(Line("queue", queue, "--queue (PJM resource group, -L rscgrp=)"))
    else:
        lines.append(
            missing("queue", "cx-small", "the resource group jobs go to (pjsub -L rscgrp=; pjstat --rsc lists them)")
        )
    lines.append(Line("can_requeue", False, "PJM: runs continue through a chain of dependent jobs"))
    lines.append(
        missing(
            "local_dir_var",
            "PJM_LOCALTMP",
            "the variable naming node-local scratch in a job (Fujitsu "
            "systems: PJM_LOCALTMP; default TMPDIR, /tmp when unset)",
        )
    )
    return "PJM resource group " + (queue or "(not given)"), lines


DISCOVER: Dict[str, Callable[[Ask, Optional[str]], Tuple[str, List[Line]]]] = {
    "slurm": discover_slurm,
    "pbs": discover_pbs,
    "sge": discover_sge,
    "pjm": discover_pjm,
}

"""A real two-node cluster on one machine, for the multi-node tests (tests/test_twonode.py).

Two nodes, ``node1`` (10.77.0.1) and ``node2`` (10.77.0.2): each is a network namespace joined by
a veth link to a bridge in the root namespace (10.77.0.254/24, no route out: nothing but the two
nodes and the bridge address can be reached from a node), a hostname namespace, and, per entry, a
private mount namespace in which the node's own scratch directory covers ``ROOT/local`` (the same
path is a different directory on each node, as node-local disk behind ``$TMPDIR``) and a hosts
file covers ``/etc/hosts`` (``tests/twonode/on-node`` enters a node). Everything else (/work,
/tmp, /home, /dev/shm) is shared, as a cluster's shared file system is.

- SLURM 22.05 across both: a private ``munged`` (its own socket), ``slurmctld`` in the root
  namespace on the bridge address, one ``slurmd -N NODE`` inside each node. slurm.conf keeps
  SLURM's defaults (``MpiDefault=none``, ``KillWait`` 30 s, ``SlurmdTimeout`` 300 s) except
  process tracking and task binding (``proctrack/linuxproc``, ``task/none``: two slurmds on one
  machine cannot share a cgroup tree) and a per-node ``TmpFS``.
- ``tests/twonode/bin/ssh``: the ssh stand-in ``mpirun``'s rsh launcher and ``horovodrun`` find
  first on ``PATH``; it runs the command on the named node in a fresh environment, as sshd does.

``up()`` is idempotent (it first removes whatever a crashed run left: processes in the node
namespaces, its own daemons, found by PID through their command lines, the namespaces, the
bridge, ROOT) and takes about a second; ``down()`` stops everything by PID and removes it all.
Only the lack of root or of network namespaces makes ``up()`` raise :class:`Unavailable` (the
tests skip with its reason); SLURM, munge and iproute2 are installed from Debian when missing.

``python tests/twonode.py up|down|status`` does the same by hand. ROOT is
``$PIXPRO_TWONODE_ROOT`` (default ``/tmp/pixpro-twonode``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ON_NODE = HERE / "twonode" / "on-node"
SSH_DIR = HERE / "twonode" / "bin"  # holds only `ssh`, the stand-in
ROOT = Path(os.environ.get("PIXPRO_TWONODE_ROOT", "/tmp/pixpro-twonode"))
NODES = ("node1", "node2")
ADDR = {"node1": "10.77.0.1", "node2": "10.77.0.2"}
BRIDGE, BRIDGE_ADDR, PREFIX = "pxtn-br", "10.77.0.254", 24
NETNS = {n: f"pxtn-{n}" for n in NODES}
VETH = {n: (f"pxtn-n{n[-1]}", f"pxtn-n{n[-1]}b") for n in NODES}  # (created, on the bridge)
NODE_IF = "eth0"  # the created end's name inside each node: the same on both, as on a cluster
# (horovodrun requires an interface name that every host has)
SLURMD_PORT = 6818  # each slurmd has its own network namespace: one port for both
DAEMONS = ("munged", "slurmctld", "slurmscriptd", "slurmd", "slurmstepd")


class Unavailable(Exception):
    """The cluster cannot be built on this machine (the reason is the message)."""


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return r


def _wait(pred, timeout: float, what: str, interval: float = 0.2) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- processes
def _netns_inode(node: str) -> Optional[int]:
    try:
        return os.stat(f"/run/netns/{NETNS[node]}").st_ino
    except OSError:
        return None


def _pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def node_of(pid: int) -> Optional[str]:
    """The node a process runs on (by its network namespace), or None for the root namespace."""
    try:
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
    for n in NODES:
        if _netns_inode(n) == ino:
            return n
    return None


def pids_on(node: str) -> List[int]:
    """Every process running on ``node``."""
    ino = _netns_inode(node)
    if ino is None:
        return []
    out = []
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                out.append(pid)
        except OSError:
            continue
    return out


def cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def environ(pid: int) -> Dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    out = {}
    for it in items:
        if b"=" in it:
            k, v = it.split(b"=", 1)
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_node(node: str, timeout: float = 10.0) -> int:
    """SIGKILL every process on ``node`` (a node losing power, seen from the processes on it);
    returns how many there were. The node's namespaces stay: it can be started again."""
    killed = set()
    end = time.time() + timeout
    while time.time() < end:
        pids = [p for p in pids_on(node) if _alive(p)]
        if not pids:
            return len(killed)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"processes on {node} survive SIGKILL: {pids_on(node)}")


def _our_daemons(root: Path) -> List[int]:
    """This cluster's daemons outside the nodes (munged, slurmctld, ...), by command line/environment."""
    tag, conf = str(root), f"SLURM_CONF={root / 'slurm.conf'}"
    out = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        argv = cmdline(pid)
        if not argv or os.path.basename(argv[0]) not in DAEMONS:
            continue
        if any(tag in a for a in argv) or conf.split("=", 1)[1] == environ(pid).get("SLURM_CONF"):
            out.append(pid)
    return out


def _stop(pids: Sequence[int], timeout: float = 10.0) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.time() + timeout
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------- set-up
def _install_if_missing() -> None:
    need = [
        pkg
        for tool, pkg in (
            ("ip", "iproute2"),
            ("nsenter", "util-linux"),
            ("slurmctld", "slurmctld"),
            ("slurmd", "slurmd"),
            ("sbatch", "slurm-client"),
            ("munged", "munge"),
        )
        if not shutil.which(tool)
    ]
    if not need:
        return
    if not shutil.which("apt-get"):
        raise Unavailable(f"missing {', '.join(need)} and no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "install", "-y", "--no-install-recommends", *need], env=env, timeout=900)


def _slurm_conf(root: Path, ctld_port: int) -> str:
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(
        f"NodeName={n} NodeAddr={ADDR[n]} NodeHostname={n} CPUs=2 Boards=1 SocketsPerBoard=1 "
        f"CoresPerSocket=2 ThreadsPerCore=1 RealMemory=2000 State=UNKNOWN"
        for n in NODES
    )
    return f"""# Two-node test cluster (tests/twonode.py). SLURM's defaults except where noted.
ClusterName=pxtwonode
SlurmctldHost={host}({BRIDGE_ADDR})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/nodes/%n/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/nodes/%n/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
SlurmctldPort={ctld_port}
SlurmdPort={SLURMD_PORT}
# Not the defaults: no cgroup tree per slurmd on one machine; a per-node TmpFS.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TmpFS={root}/nodes/%n/tmp
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=twonode Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """A running two-node cluster (see the module docstring)."""

    def __init__(self, root: Path = ROOT):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.local_mount = self.root / "local"  # the node-local scratch path (a different directory per node)

    # -- environment for client commands and jobs
    @property
    def env(self) -> Dict[str, str]:
        """os.environ plus SLURM_CONF, the ssh stand-in first on PATH and TMPDIR = node-local scratch."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{SSH_DIR}:{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env["TMPDIR"] = str(self.local_mount)
        env["PIXPRO_TWONODE_ROOT"] = str(self.root)
        return env

    def local_dir(self, node: str) -> Path:
        """Where ``node``'s node-local scratch really is (as seen from outside the nodes)."""
        return self.root / "nodes" / node / "local"

    def on(self, node: str, argv: Sequence[str]) -> List[str]:
        """``argv`` run on ``node``."""
        return [str(ON_NODE), node, *map(str, argv)]

    def run_on(self, node: str, argv: Sequence[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        return subprocess.run(self.on(node, argv), capture_output=True, text=True, timeout=timeout, **kw)

    # -- SLURM
    def start_slurmd(self, node: str) -> int:
        log = open(self.root / "log" / f"slurmd.{node}.out", "a")
        p = subprocess.Popen(
            self.on(node, ["slurmd", "-D", "-N", node, "-f", self.conf]),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return p.pid

    def node_states(self) -> Dict[str, str]:
        r = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True, timeout=30
        )
        return dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2)

    def wait_idle(self, timeout: float = 60, nodes: Sequence[str] = NODES) -> None:
        _wait(
            lambda: all(self.node_states().get(n) == "idle" for n in nodes),
            timeout,
            f"{', '.join(nodes)} to be idle in SLURM",
        )

    def scontrol(self, *args: str, check: bool = True) -> str:
        r = _run(["scontrol", *args], check=check, env=self.env)
        return r.stdout

    def job_fields(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job`` as a dict ({} once SLURM has forgotten the job)."""
        r = _run(["scontrol", "-o", "show", "job", str(job_id)], check=False, env=self.env)
        out = {}
        for word in r.stdout.split():
            if "=" in word:
                k, v = word.split("=", 1)
                out[k] = v
        return out


def down(root: Path = ROOT) -> None:
    """Stop and remove everything of the cluster at ``root`` (and of a crashed earlier one)."""
    root = Path(root)
    for n in NODES:
        if _netns_inode(n) is not None:
            kill_node(n)
    _stop(_our_daemons(root))
    for n in NODES:
        uts = root / "ns" / f"{n}.uts"
        if uts.exists():
            subprocess.run(["umount", str(uts)], capture_output=True, timeout=30)
        if _netns_inode(n) is not None:
            _run(["ip", "netns", "delete", NETNS[n]], check=False)
        for dev in VETH[n]:
            if Path(f"/sys/class/net/{dev}").exists():
                _run(["ip", "link", "delete", dev], check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "delete", BRIDGE], check=False)
    shutil.rmtree(root, ignore_errors=True)


def up(root: Path = ROOT, slurm: bool = True) -> Cluster:
    """Bring the cluster up from scratch (removing any earlier one first); see the module docstring."""
    root = Path(root)
    if os.geteuid() != 0:
        raise Unavailable("the two-node cluster needs root (network, hostname and mount namespaces)")
    if not shutil.which("ip") or not shutil.which("nsenter"):
        _install_if_missing()
    down(root)
    probe = _run(["ip", "netns", "add", NETNS["node1"]], check=False)
    if probe.returncode != 0:
        raise Unavailable(f"network namespaces cannot be created here: ip netns add: {probe.stderr.strip()}")
    try:
        _build(root)
        if slurm:
            _install_if_missing()
            _start_slurm(root)
    except BaseException:
        down(root)
        raise
    return Cluster(root)


def _build(root: Path) -> None:
    for sub in ("ns", "etc", "log", "ctld", "munge", "local"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n in NODES:
        for sub in ("local", "tmp", "spool"):
            (root / "nodes" / n / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    hosts = "127.0.0.1\tlocalhost\n" + "".join(f"{ADDR[n]}\t{n}\n" for n in NODES)
    (root / "etc" / "hosts").write_text(hosts)
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "add", f"{BRIDGE_ADDR}/{PREFIX}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    for n in NODES:
        if _netns_inode(n) is None:
            _run(["ip", "netns", "add", NETNS[n]])
        inside, outside = VETH[n]
        _run(["ip", "link", "add", inside, "type", "veth", "peer", "name", outside])
        _run(["ip", "link", "set", inside, "netns", NETNS[n]])
        _run(["ip", "link", "set", outside, "master", BRIDGE, "up"])
        ns = ["ip", "netns", "exec", NETNS[n]]  # only for configuring links (no /sys needed after)
        _run([*ns, "ip", "link", "set", "lo", "up"])
        _run([*ns, "ip", "link", "set", inside, "name", NODE_IF])
        _run([*ns, "ip", "addr", "add", f"{ADDR[n]}/{PREFIX}", "dev", NODE_IF])
        _run([*ns, "ip", "link", "set", NODE_IF, "up"])
        uts = root / "ns" / f"{n}.uts"
        uts.touch()
        _run(["unshare", f"--uts={uts}", "hostname", n])
        # A node has no route out: only the bridge's subnet (no default route, no forwarding).
        routes = _run([*ns, "ip", "-4", "route", "show"]).stdout
        if "default" in routes:
            raise RuntimeError(f"{n} has a default route: {routes}")
    got = subprocess.run(
        [str(ON_NODE), "node2", "hostname"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PIXPRO_TWONODE_ROOT=str(root)),
    )
    if got.stdout.strip() != "node2":
        raise RuntimeError(f"entering node2 failed: {got.stdout!r} {got.stderr!r}")


def _start_slurm(root: Path) -> None:
    shutil.chown(root / "munge", "munge", "munge")
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, _free_port()))
    env = dict(os.environ, SLURM_CONF=str(conf), PIXPRO_TWONODE_ROOT=str(root))
    sock = root / "munge" / "munge.sock"
    subprocess.Popen(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "munged",
            "--foreground",
            f"--socket={sock}",
            f"--pid-file={root}/munge/munged.pid",
            f"--seed-file={root}/munge/seed",
            "--log-file=/dev/null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait(sock.exists, 10, "munged's socket")
    subprocess.Popen(
        ["slurmctld", "-D", "-c", "-f", str(conf)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=open(root / "log" / "slurmctld.out", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    c = Cluster(root)
    for n in NODES:
        c.start_slurmd(n)
    try:
        c.wait_idle(60)
    except RuntimeError:
        tail = []
        for f in sorted((root / "log").iterdir()):
            tail.append(f"==== {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        raise RuntimeError(f"SLURM did not come up: {c.node_states()}\n" + "\n".join(tail)) from None


def main(argv: Sequence[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        t0 = time.time()
        try:
            c = up()
        except Unavailable as exc:
            print(f"twonode: unavailable: {exc}", file=sys.stderr)
            return 2
        print(
            f"twonode: up in {time.time() - t0:.1f} s: {c.node_states()}; SLURM_CONF={c.conf}; "
            f"enter a node with {ON_NODE} NODE CMD"
        )
        return 0
    if cmd == "down":
        t0 = time.time()
        down()
        print(f"twonode: down in {time.time() - t0:.1f} s")
        return 0
    if cmd == "status":
        c = Cluster()
        up_ = all(_netns_inode(n) is not None for n in NODES)
        print(
            f"twonode: namespaces {'up' if up_ else 'absent'}; "
            f"processes: {', '.join(f'{n}={len(pids_on(n))}' for n in NODES)}; "
            f"SLURM: {c.node_states() if c.conf.exists() else 'not configured'}"
        )
        return 0
    print("usage: python tests/twonode.py up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

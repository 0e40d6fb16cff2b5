"""``launcher COMMAND``: render (dry run), submit, status, cancel, logs, resume, list, profile (a lazy click group)."""

import sys

from plumbing.cli import group, run

# ``profile`` is a group of its own (``profile init``); its commands load lazily like the others.
PROFILE = group(
    "profile",
    {
        "init": ("launcher.profile_init", "Write a cluster profile from the scheduler's own answers"),
        "show": ("launcher.profile_show", "Print a profile with every key resolved (file or default)"),
        "list": ("launcher.profile_list", "The profiles --cluster accepts by name"),
    },
    help="Cluster profiles: write one from the cluster's answers, show one resolved, list them.",
    epilog="Example: launcher profile init --scheduler slurm --out mycluster.toml",
)

COMMANDS: dict = {
    "render": ("launcher.render", "Dry run: the job script on stdout, the submit command on stderr"),
    "submit": ("launcher.submit", "Render the job script into a new run directory and submit it"),
    "array": ("launcher.arrays", "Many small jobs as one array job with a concurrency cap"),
    "pipeline": ("launcher.pipeline", "Pack, flow, verify, train, convert and eval as dependent jobs"),
    "status": ("launcher.status", "Where a run stands (rate-limited scheduler queries)"),
    "cancel": ("launcher.cancel", "Stop a run and cancel its jobs"),
    "logs": ("launcher.logs", "The run's log, appended across requeues"),
    "resume": ("launcher.resume", "Continue a stopped or failed run from its checkpoint"),
    "list": ("launcher.list_runs", "The runs under a directory"),
    "profile": PROFILE,
}

command = group(
    "launcher",
    COMMANDS,
    help="Render, submit and follow training runs on clusters or this machine.",
    epilog="Example: launcher submit --scheduler pbs --cluster abci3 --gpus 16 --frames 6 --group gXXXX "
    "--data shards/manifest.json; "
    "'launcher COMMAND --help' shows a command's options.",
)


def main(argv=None) -> int:
    return run(command, argv, "launcher")


if __name__ == "__main__":
    sys.exit(main())

"""``launcher render``: the dry run. The job script goes to stdout, the exact submit command(s) to stderr.

``launcher render ... > job.sh`` gives a runnable script; nothing is written or submitted. The script's text is
:mod:`launcher.job_script`.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Optional, Sequence

from launcher.options import PASSTHROUGH, TRAINER_ARGS_HELP, job_options
from launcher.submit import prepare, print_dry_run
from plumbing.cli import call
from plumbing.cli import command as cli_command


@cli_command(
    "render",
    context_settings=PASSTHROUGH,
    epilog="Example: launcher render --scheduler slurm --gpus 8 --frames 6 --data shards/manifest.json > job.sh. "
    + TRAINER_ARGS_HELP,
)
@job_options
def command(trainer_args, **opts) -> int:
    """Dry run: the job script on stdout, the exact submit command(s) on stderr; nothing is written."""
    print_dry_run(prepare(SimpleNamespace(**opts), trainer_args))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "launcher render")


if __name__ == "__main__":
    sys.exit(main())

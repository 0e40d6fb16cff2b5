"""``launcher render``: the dry run. The job script goes to stdout, the exact submit command(s) to stderr.

``launcher render ... > job.sh`` gives a runnable script; nothing is written or submitted.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from launcher.options import add_job_options
from launcher.submit import prepare, print_dry_run


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="launcher render", description=__doc__.splitlines()[0], allow_abbrev=False,
                                 epilog="Any other --option value or key=value goes to the trainer.")
    add_job_options(ap)
    args, extra = ap.parse_known_args(argv)
    print_dry_run(prepare(args, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``launcher profile list``: every profile the launcher can load by name, where it is, what it is."""

from __future__ import annotations

import sys

import click

from launcher.clusters import available_profiles, locate_profile, profile_from_dict, read_toml
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@cli_command("list", epilog="Example: launcher profile list")
@click.option("--profile-dir", default=None, help="a directory of your own profiles (searched first)")
def command(profile_dir) -> int:
    """The profiles --cluster accepts by name: shipped ones and those in --profile-dir."""
    for name in available_profiles(profile_dir):
        raw, source = locate_profile(name, profile_dir)
        try:
            prof = profile_from_dict(read_toml(raw, source), source)
            what = f"{prof.scheduler:6s} {prof.description}"
        except UserError as exc:  # a broken user profile is listed with its error, not a traceback
            what = f"(invalid: {exc})"
        where = source if source != f"{name}.toml" else "shipped"
        print(f"{name:14s} {what}  [{where}]")
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher profile list")


if __name__ == "__main__":
    sys.exit(main())

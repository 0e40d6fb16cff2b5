"""``launcher profile show NAME_OR_PATH``: a profile as the launcher resolves it, every key with its
value and whether the file set it or the default applies."""

from __future__ import annotations

import dataclasses
import sys

import click

from launcher.clusters import ClusterProfile, format_hms, locate_profile, profile_from_dict, read_toml
from launcher.profile_init import toml_value
from plumbing.cli import call
from plumbing.cli import command as cli_command

#: Field name -> the key a profile file spells it with.
TOML_KEY = {"max_walltime_s": "max_walltime", "default_walltime_s": "default_walltime"}


def profile_keys():
    """(field name, TOML key) of every key a profile file may set, in the dataclass's order."""
    return [(f.name, TOML_KEY.get(f.name, f.name)) for f in dataclasses.fields(ClusterProfile) if f.name != "source"]


def resolved_rows(profile: ClusterProfile, data: dict):
    """(key, TOML value, "file" | "default") for every key of ``profile``; ``data``: the file's own keys."""
    rows = []
    for field, key in profile_keys():
        value = getattr(profile, field)
        if field in TOML_KEY:
            value = format_hms(value)
        elif field == "env":
            value = dict(value)
        rows.append((key, toml_value(value), "file" if key in data else "default"))
    return rows


@cli_command("show", epilog="Example: launcher profile show abci3")
@click.argument("name_or_path")
@click.option("--profile-dir", default=None, help="a directory of your own profiles (searched first)")
def command(name_or_path, profile_dir) -> int:
    """Print a profile (shipped, from --profile-dir, or a .toml path) with every key resolved."""
    raw, source = locate_profile(name_or_path, profile_dir)
    data = read_toml(raw, source)
    profile = profile_from_dict(data, source)
    print(f"# profile {profile.name} ({profile.scheduler}) from {source}")
    rows = resolved_rows(profile, data)
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        print(f"{key:<{width}} = {value}  # {origin}")
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher profile show")


if __name__ == "__main__":
    sys.exit(main())

"""docs/profiles.md documents every profile key, and only those; its example profile loads and validates."""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

from launcher.clusters import ClusterProfile, profile_from_dict
from launcher.profile_show import profile_keys

DOC = Path(__file__).resolve().parents[1] / "docs" / "profiles.md"


def documented_rows():
    """{key: [type, default, read by, example, what]} from the table of every key."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z_]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split(" | ")]
    return rows


def example_profile() -> str:
    """The indented (4-space) block after the heading "## Example: a university SLURM cluster"."""
    text = DOC.read_text().split("## Example: a university SLURM cluster", 1)[1]
    block = [l for l in text.splitlines() if l.startswith("    ")]
    assert block, "no indented example profile under the heading"
    return textwrap.dedent("\n".join(block))


def test_every_profile_key_is_documented_and_nothing_else():
    keys = [key for _, key in profile_keys()]
    rows = documented_rows()
    assert sorted(set(keys) - set(rows)) == [], "profile keys missing from docs/profiles.md"
    assert sorted(set(rows) - set(keys)) == [], "docs/profiles.md documents keys a profile does not have"
    for key, cells in rows.items():
        assert len(cells) == 5 and all(cells), (key, cells)


def test_documented_defaults_are_the_real_ones():
    rows = documented_rows()
    defaults = ClusterProfile(name="n", scheduler="slurm")
    hms = {"max_walltime": "24:00:00", "default_walltime": "01:00:00"}
    for field, key in profile_keys():
        if key in ("name", "scheduler"):
            continue
        doc = rows[key][1].split()[0].strip("`")
        value = getattr(defaults, field)
        if key in hms:
            assert doc == f'"{hms[key]}"' and value == {"max_walltime": 86400, "default_walltime": 3600}[key], key
        elif isinstance(value, bool):
            assert doc == str(value).lower(), key
        elif isinstance(value, int):
            assert doc == str(value), key
        elif isinstance(value, str):
            assert doc == f'"{value}"', key
        elif key == "env":
            assert doc == "{}" and value == ()
        else:  # lists
            assert tomllib.loads(f"v = {rows[key][1].strip('`')}")["v"] == list(value), key


def test_the_example_profile_loads_and_validates():
    data = tomllib.loads(example_profile())
    prof = profile_from_dict(data, "docs/profiles.md")
    assert (prof.scheduler, prof.queue, prof.gpus_per_node, prof.gpu_memory_gib, prof.exclusive) == (
        "slurm",
        "gpu",
        4,
        40,
        False,
    )
    assert prof.max_walltime_s == 2 * 86400 and prof.local_dir_var == "TMPDIR" and prof.modules
    assert set(data) <= {key for _, key in profile_keys()}

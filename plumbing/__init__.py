"""The ground floor: plumbing every part shares, importing nothing of this project.

- :mod:`plumbing.errors`  ``UserError``, the one exception type that means "bad input"
- :mod:`plumbing.atomic`  atomic file writes and one-line disk errors
- :mod:`plumbing.cli`     the command-line frame (click groups, one-line errors, exit 2)
- :mod:`plumbing.runs`    the run-directory layout and the trainer's exit codes
- :mod:`plumbing.jobenv`  the launch environment: rank, local rank, node, nodes
"""

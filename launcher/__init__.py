"""Render, submit and keep alive training jobs on SLURM, PBS Pro, Grid Engine, PJM and locally."""

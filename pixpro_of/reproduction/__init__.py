"""The mini-reproduction's parts: the plan (what runs), the runner (subprocesses), the report (table, chart).

The command that puts them together is ``python -m pixpro_of reproduce`` (:mod:`pixpro_of.reproduce`).
"""

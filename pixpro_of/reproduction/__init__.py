"""The reproduction's parts: the plan (rows, profiles, data, the launcher runs), the report (tables, pictures)
and ``job`` (an evaluation as a launcher run).

The command that puts them together is ``python -m pixpro_of reproduce`` (:mod:`pixpro_of.reproduce`).
"""

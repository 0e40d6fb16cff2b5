"""The reproduction, ``python -m pixpro_of reproduce`` (:mod:`.cli`): the plan (rows, profiles, the launcher
runs), the data it prepares, the report (tables, pictures) and ``job`` (an evaluation as a launcher run).
"""

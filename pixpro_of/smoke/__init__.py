"""The self-check of a cluster set-up, ``python -m pixpro_of smoke`` (:mod:`.cli`): what each rank checks
(:mod:`.checks`), one rank's run and rank 0's report (:mod:`.rank`), the report's lines (:mod:`.report`), and the
older quick Horovod/mpi4py check (:mod:`.mpi_check`).
"""

"""Render, submit and keep alive training jobs on SLURM, PBS Pro, Grid Engine, PJM and locally.

Two separate axes: the *scheduler* obtains nodes (``--scheduler slurm|pbs|sge|pjm|local``, with
a cluster profile from ``configs/clusters/*.toml`` chosen by ``--cluster``), the *launch method*
starts ranks inside the allocation (``--launch mpirun|horovodrun|srun|torchrun``).

Commands (``launcher COMMAND --help``)::

    launcher render --scheduler pbs --cluster abci3 --gpus 16 --frames 6 > job.sh   # dry run
    launcher submit --scheduler slurm --gpus 16 --frames 6 --walltime 24:00:00
    launcher status RUN_DIR        # rate-limited scheduler queries
    launcher logs RUN_DIR -f       # one log, appended across requeues and chain links
    launcher cancel RUN_DIR
    launcher resume RUN_DIR        # continue a stopped, failed or cancelled run
    launcher list [runs]

Modules: :mod:`launcher.clusters` (profiles), :mod:`launcher.request` (resource math and the
trainer command), :mod:`launcher.schedulers` (submit/query/cancel argv per batch system),
:mod:`launcher.job_script` (the job script from Jinja templates, shell-quoted), :mod:`launcher.job_files`
(the files of ``job/``), :mod:`launcher.local_runner` (the ``local`` batch system). Templates: ``templates/*.sh.j2``.

Keeping a run alive: the job gives the trainer ``--deadline`` (walltime minus a margin, from job
start) and passes the scheduler's signals on to the ranks as SIGUSR2. The trainer exits 75 after a
checkpoint; the job then requeues itself (SLURM, local) or continues through a chain of jobs that
wait for each other (``afterany`` / ``-hold_jid`` / PJM step jobs), pre-submitted with ``--chain N``
or extended by the last link. Timeouts and preemptions have separate budgets
(``--max-timeouts``, ``--max-preemptions``); a failure or a used-up budget writes
``RUN_DIR/job/stopped`` and every later link exits at once.
"""

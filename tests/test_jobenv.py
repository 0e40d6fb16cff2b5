"""plumbing.jobenv: one job environment (rank, local rank, node, nodes) from every launcher's variables."""

from __future__ import annotations

import pytest

from plumbing.errors import UserError
from plumbing.jobenv import JobEnvironment, job_environment, tasks_per_node


def where(env, **kw):
    job = job_environment(env, **kw)
    return (job.launcher, job.rank, job.world_size, job.local_rank, job.local_size, job.node, job.nodes)


def test_a_lone_process_is_rank_0_of_1():
    job = job_environment({})
    assert job == JobEnvironment() and not job.mpi and job.is_main and job.scheduler == ""


def test_torchrun():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
    }
    assert where(env) == ("torchrun", 5, 8, 1, 4, 1, 2)
    # without GROUP_*: the node follows from the local size
    assert where({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4"}) == (
        "torchrun",
        6,
        8,
        2,
        4,
        1,
        2,
    )
    # torchrun under srun or mpirun: its own variables win over the ones its children inherit
    env.update(SLURM_PROCID="0", SLURM_NTASKS="2", OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2", SLURM_JOB_ID="7")
    job = job_environment(env)
    assert (job.launcher, job.rank, job.scheduler) == ("torchrun", 5, "slurm") and not job.mpi


def test_open_mpi_and_pmix_rank():
    env = {
        "OMPI_COMM_WORLD_RANK": "5",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    }
    assert where(env) == ("openmpi", 5, 8, 1, 4, 1, 2)
    assert job_environment(env).mpi
    del env["OMPI_COMM_WORLD_RANK"]
    assert where(dict(env, PMIX_RANK="6")) == ("openmpi", 6, 8, 1, 4, 1, 2)


def test_pmix_under_srun_takes_sizes_from_slurm():
    env = {
        "PMIX_RANK": "3",
        "SLURM_PROCID": "3",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }
    assert where(env) == ("pmix", 3, 4, 1, 2, 1, 2)
    assert job_environment(env).mpi


def test_mpich_hydra():
    env = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    assert where(env) == ("mpich", 3, 4, 1, 2, 1, 2)
    assert job_environment(env).mpi


def test_mvapich():
    env = {
        "MV2_COMM_WORLD_RANK": "2",
        "MV2_COMM_WORLD_SIZE": "4",
        "MV2_COMM_WORLD_LOCAL_RANK": "0",
        "MV2_COMM_WORLD_LOCAL_SIZE": "2",
    }
    assert where(env) == ("mvapich", 2, 4, 0, 2, 1, 2)


def test_srun_step():
    env = {
        "SLURM_JOB_ID": "42",
        "SLURM_PROCID": "4",
        "SLURM_NTASKS": "6",
        "SLURM_STEP_NUM_TASKS": "5",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "2",
        "SLURM_STEP_NUM_NODES": "3",
        "SLURM_NNODES": "3",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
    }
    job = job_environment(env)
    assert where(env) == ("srun", 4, 5, 0, 1, 2, 3)
    assert job.scheduler == "slurm" and not job.mpi
    # one task per node, as hdf5_tools stage starts it
    env = {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    }
    assert where(env) == ("srun", 1, 2, 0, 1, 1, 2)


def test_slurm_without_step_variables():
    # what the DDP backend always accepted: rank and world from SLURM_PROCID / SLURM_NTASKS
    assert where({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"})[:4] == ("slurm", 2, 4, 0)
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "8",
        "SLURM_NODEID": "0",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
    }
    assert where(env) == ("slurm", 0, 8, 0, 4, 0, 2)


def test_pbs_nodefile(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n01.cluster\nn01.cluster\nn02.cluster\nn02.cluster\n")
    env = {"PBS_JOBID": "12.pbs", "PBS_NODEFILE": str(nodefile)}
    job = job_environment(env, hostname="n02")
    assert (job.scheduler, job.launcher, job.rank, job.world_size, job.node, job.nodes) == ("pbs", "", 0, 1, 1, 2)
    assert job_environment(dict(env, PBS_VNODENUM="0"), hostname="n02").node == 0  # pbsdsh says which node
    # under mpirun in a PBS job the MPI variables give the ranks
    job = job_environment(
        dict(
            env,
            OMPI_COMM_WORLD_RANK="3",
            OMPI_COMM_WORLD_SIZE="4",
            OMPI_COMM_WORLD_LOCAL_RANK="1",
            OMPI_COMM_WORLD_LOCAL_SIZE="2",
        )
    )
    assert (job.scheduler, job.launcher, job.rank, job.node, job.nodes) == ("pbs", "openmpi", 3, 1, 2)


def test_grid_engine_hostfile(tmp_path):
    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text("g0001 4 all.q@g0001 UNDEFINED\ng0002 4 all.q@g0002 UNDEFINED\ng0003 4 all.q@g0003 UNDEFINED\n")
    job = job_environment({"PE_HOSTFILE": str(hostfile), "NHOSTS": "3", "JOB_ID": "5"}, hostname="g0003.example")
    assert (job.scheduler, job.node, job.nodes, job.rank, job.world_size) == ("sge", 2, 3, 0, 1)
    assert job_environment({"SGE_ROOT": "/opt/sge", "JOB_ID": "5", "NHOSTS": "4"}).nodes == 4


def test_pjm(tmp_path):
    nodeinf = tmp_path / "nodeinf"
    nodeinf.write_text("a01\na02\n")
    env = {"PJM_JOBID": "77", "PJM_O_NODEINF": str(nodeinf), "PJM_MPI_PROC": "8", "PJM_PROC_BY_NODE": "4"}
    job = job_environment(env, hostname="a02")
    assert (job.scheduler, job.launcher, job.node, job.nodes) == ("pjm", "", 1, 2)
    assert job_environment({"PJM_JOBID": "77", "PJM_NODE": "3"}).nodes == 3
    # Fujitsu MPI's mpiexec is Open MPI: its variables give the ranks
    job = job_environment(
        dict(
            env,
            OMPI_COMM_WORLD_RANK="5",
            OMPI_COMM_WORLD_SIZE="8",
            OMPI_COMM_WORLD_LOCAL_RANK="1",
            OMPI_COMM_WORLD_LOCAL_SIZE="4",
        )
    )
    assert (job.scheduler, job.launcher, job.rank, job.node, job.nodes) == ("pjm", "openmpi", 5, 1, 2)


def test_tasks_per_node_form():
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert tasks_per_node("4") == [4]
    with pytest.raises(UserError, match="tasks per node '2x3'"):
        tasks_per_node("2x3")


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not a whole number"),
        ({"OMPI_COMM_WORLD_RANK": "4", "OMPI_COMM_WORLD_SIZE": "4"}, "(openmpi): rank 4 of a world of 4"),
        (
            {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NODEID": "3", "SLURM_STEP_NUM_NODES": "2"},
            "(srun): node 3 of 2",
        ),
        ({"PBS_NODEFILE": "/no/such/nodefile"}, "cannot read the host list /no/such/nodefile"),
    ],
)
def test_bad_variables_are_one_line_errors_naming_them(env, message):
    with pytest.raises(UserError) as info:
        job_environment(env)
    assert message in str(info.value) and "\n" not in str(info.value)

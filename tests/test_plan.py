"""The mpirun command builder, MPI flavour detection and output parsing, with literal values."""

from __future__ import annotations

import pytest

from asyncddp.launcher.run_config import RunConfig
from asyncddp.errors import LaunchError
from asyncddp.launcher.hosts import HostSpec
from asyncddp.launcher.mpi import MpiFlavor, MpiInstall, find_failure, find_mpirun, parse_mpi_version, split_tagged_line
from asyncddp.launcher.plan import build_plan, format_plan, ssh_config_text

OMPI5 = MpiFlavor("openmpi", "5.0.11", 5)
OMPI4 = MpiFlavor("openmpi", "4.1.6", 4)
MPICH = MpiFlavor("mpich", "4.1.2", 4)
PY = "/venv/bin/python"


def local(num_ranks=2, command=("train.py", "--lr", "0.1"), **extra) -> RunConfig:
    fields = dict(command=command, num_ranks=num_ranks, hosts=(HostSpec("localhost", num_ranks, source="default"),),
                  host_source="default", oversubscribe=True)
    fields.update(extra)
    return RunConfig(**fields)


def plan(config, flavor=OMPI5, euid=0, prefix=None, environ=None, check_dir=None, cpu_count=None):
    return build_plan(config, MpiInstall("/venv/bin/mpirun", flavor, prefix), python=PY, euid=euid,
                      environ=environ or {}, private_dir="/priv", check_dir=check_dir, cpu_count=cpu_count)


def test_more_local_ranks_than_cores_yield_when_idle():
    yield_env = "OMPI_MCA_mpi_yield_when_idle"
    four = local(num_ranks=4, hosts=(HostSpec("localhost", 4),))
    result = plan(four, cpu_count=2)
    assert result.env[yield_env] == "1" and ("-x", yield_env) in result.groups
    # Enough cores, cores unknown, the user's own value (environment or -x NAME=value), a remote
    # host (its cores are not ours), MPICH (no such variable): left alone.
    assert yield_env not in plan(four, cpu_count=4).env
    assert yield_env not in plan(four).env
    assert plan(four, cpu_count=2, environ={yield_env: "0"}).env.get(yield_env) is None
    assert plan(local(num_ranks=4, hosts=(HostSpec("localhost", 4),), env_set=((yield_env, "0"),)),
                cpu_count=2).env[yield_env] == "0"
    assert yield_env not in plan(local(num_ranks=4, hosts=(HostSpec("node7", 4),)), cpu_count=2).env
    assert yield_env not in plan(four, flavor=MPICH, cpu_count=2).env


def test_parse_mpi_version_three_flavours():
    assert parse_mpi_version("mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n") == OMPI5
    assert parse_mpi_version("mpirun (Open MPI) 4.1.6\n\nReport bugs to http://www.open-mpi.org/community/help/\n") == OMPI4
    hydra = ("HYDRA build details:\n    Version:                                 4.1.2\n"
             "    Release Date:                            Wed Jun  7 15:22:45 CDT 2023\n")
    assert parse_mpi_version(hydra) == MPICH
    with pytest.raises(LaunchError, match="unknown MPI: 'mpirun --version' printed 'Intel"):
        parse_mpi_version("Intel(R) MPI Library for Linux* OS, Version 2021.6\n")


def test_open_mpi_5_localhost_default_as_root():
    result = plan(local(num_ranks=4, oversubscribe=True, hosts=(HostSpec("localhost", 4),)), euid=0)
    assert list(result.argv) == [
        "/venv/bin/mpirun", "-np", "4", "--host", "localhost:4", "--map-by", "slot", "--bind-to", "none",
        "--output", "tag", "--allow-run-as-root",
        "-x", "PYTHONUNBUFFERED", "-x", "OMPI_ALLOW_RUN_AS_ROOT", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
        PY, "-m", "mpi4py", "train.py", "--lr", "0.1",
    ]
    assert result.env == {"PYTHONUNBUFFERED": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                          "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    assert result.rank_hosts == ("localhost",) * 4 and result.files == {}


def test_open_mpi_5_oversubscribes_only_past_the_slots_and_leaves_osc_to_each_rank():
    # The one-sided component is each rank's choice (asyncddp.comm.mpi_env looks for InfiniBand
    # on the rank's own node), so the plan neither sets nor forwards OMPI_MCA_osc.
    config = local(num_ranks=3, hosts=(HostSpec("localhost", 1),), command=("-m", "pkg.mod", "a"))
    for environ in ({}, {"OMPI_MCA_osc": "pt2pt"}):
        result = plan(config, euid=1000, environ=environ)
        assert list(result.argv) == [
            "/venv/bin/mpirun", "-np", "3", "--host", "localhost:1", "--map-by", "slot:OVERSUBSCRIBE",
            "--bind-to", "none", "--output", "tag", "-x", "PYTHONUNBUFFERED",
            PY, "-m", "mpi4py", "-m", "pkg.mod", "a",
        ]
        assert result.env == {"PYTHONUNBUFFERED": "1"}


def test_open_mpi_4_flags_env_and_network():
    config = local(num_ranks=3, hosts=(HostSpec("localhost", 2),), command=("python", "-c", "print(1)"),
                   env_forward=("NCCL_*", "HOME"), env_set=(("A", "1"),), network="eth1", working_dir="/w",
                   mpi_args=("--mca", "pml", "ob1"), timeline="/t/tl.json")
    result = plan(config, flavor=OMPI4, euid=0, environ={"NCCL_B": "x", "NCCL_A": "y", "HOME": "/root"})
    assert list(result.argv) == [
        "/venv/bin/mpirun", "-np", "3", "--host", "localhost:2", "--map-by", "slot", "--bind-to", "none",
        "--tag-output", "--oversubscribe", "--allow-run-as-root",
        "--mca", "btl_tcp_if_include", "eth1", "--mca", "oob_tcp_if_include", "eth1", "-wdir", "/w",
        "-x", "NCCL_A", "-x", "NCCL_B", "-x", "HOME", "-x", "PYTHONUNBUFFERED", "-x", "OMPI_ALLOW_RUN_AS_ROOT",
        "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "-x", "NCCL_SOCKET_IFNAME",
        "-x", "GLOO_SOCKET_IFNAME", "-x", "ASYNCDDP_TIMELINE", "-x", "ASYNCDDP_TIMELINE_PARTS", "-x", "A",
        "--mca", "pml", "ob1", "python", "-c", "print(1)",
    ]
    assert result.env["ASYNCDDP_TIMELINE"] == "/t/tl.json" and result.env["NCCL_SOCKET_IFNAME"] == "eth1"
    # Ranks that end without shutdown() leave their events in the job's private folder.
    assert result.env["ASYNCDDP_TIMELINE_PARTS"] == "/priv/timeline"
    assert result.cwd == "/w"
    remote = plan(local(hosts=(HostSpec("node1", 2),), timeline="/t/tl.json"), flavor=OMPI4)
    assert "ASYNCDDP_TIMELINE_PARTS" not in remote.env  # a remote rank's folder is not the launcher's


def test_mpich_flags():
    config = local(num_ranks=2, env_set=(("A", "1"),), network="eth0", working_dir="/w")
    result = plan(config, flavor=MPICH, euid=0)
    assert list(result.argv) == [
        "/venv/bin/mpirun", "-np", "2", "-hosts", "localhost:2", "-prepend-pattern", "[%r]<asyncddp> ",
        "-iface", "eth0", "-wdir", "/w",
        "-genvlist", "PYTHONUNBUFFERED,NCCL_SOCKET_IFNAME,GLOO_SOCKET_IFNAME,A",
        PY, "-m", "mpi4py", "train.py", "--lr", "0.1",
    ]
    with pytest.raises(LaunchError, match="MPICH's -iface takes an interface name"):
        plan(local(network="10.0.0.0/8"), flavor=MPICH)


def test_subnet_sets_no_nccl_interface():
    result = plan(local(network="10.0.0.0/24"), euid=1000)
    assert "NCCL_SOCKET_IFNAME" not in result.env
    assert list(result.argv[11:15]) == ["--mca", "btl_tcp_if_include", "10.0.0.0/24", "-x"]
    ompi4 = plan(local(network="10.0.0.0/24"), flavor=OMPI4, euid=1000)
    assert list(ompi4.argv[10:16]) == ["--mca", "btl_tcp_if_include", "10.0.0.0/24", "--mca", "oob_tcp_if_include", "10.0.0.0/24"]


REMOTE = (HostSpec("node1", 2, ssh_user="alice", ssh_port=2222, identity_file="/k/id"), HostSpec("node2", 1))


def test_remote_hosts_open_mpi_5_use_private_ssh_config_and_prefix():
    config = RunConfig(command=("t.py",), num_ranks=3, hosts=REMOTE, host_source="h.txt", oversubscribe=False,
                       known_hosts="/kh")
    result = plan(config, euid=1000, prefix="/venv")
    text = ssh_config_text(REMOTE, "/kh")
    assert text == (
        "# written by asyncddp run: per-host ssh settings for mpirun's daemons\n"
        "Host node1\n    HostName node1\n    User alice\n    Port 2222\n    IdentityFile /k/id\n    IdentitiesOnly yes\n"
        "Host node2\n    HostName node2\n"
        "Host *\n    BatchMode yes\n    StrictHostKeyChecking yes\n    ConnectTimeout 10\n    UserKnownHostsFile /kh\n"
    )
    (path,) = result.files
    assert path.startswith("/priv/ssh_config.") and result.files[path] == text
    assert list(result.argv) == [
        "/venv/bin/mpirun", "-np", "3", "--host", "node1:2,node2:1", "--map-by", "slot", "--bind-to", "none",
        "--output", "tag", "--prefix", "/venv", "--mca", "plm_ssh_agent", f"ssh -F {path}",
        "-x", "PYTHONUNBUFFERED", PY, "-m", "mpi4py", "t.py",
    ]
    assert result.rank_hosts == ("node1", "node1", "node2") and result.cwd is None
    assert "StrictHostKeyChecking yes" in ssh_config_text(REMOTE, None)
    assert "UserKnownHostsFile" not in ssh_config_text(REMOTE, None)


def test_remote_open_mpi_4_and_mpich_agents():
    config = RunConfig(command=("t.py",), num_ranks=3, hosts=REMOTE, host_source="h.txt", oversubscribe=False)
    ompi4 = plan(config, flavor=OMPI4, euid=1000, prefix="/venv")
    path = next(iter(ompi4.files))
    assert ompi4.argv[10:15] == ("--prefix", "/venv", "--mca", "plm_rsh_agent", f"ssh -F {path}")
    mpich = plan(config, flavor=MPICH, euid=1000)
    wrapper = path + ".sh"
    assert mpich.argv[5:11] == ("-prepend-pattern", "[%r]<asyncddp> ", "-launcher", "ssh", "-launcher-exec", wrapper)
    assert mpich.files[wrapper] == f'#!/bin/sh\nexec ssh -F {path} "$@"\n'


def test_hosts_with_different_pythons_get_one_app_context_each():
    hosts = (HostSpec("node1", 1, python="/a/python"), HostSpec("node2", 2))
    config = RunConfig(command=("t.py", "x"), num_ranks=3, hosts=hosts, host_source="c.yaml", oversubscribe=False)
    result = plan(config, euid=1000)
    path = next(iter(result.files))
    assert list(result.argv) == [
        "/venv/bin/mpirun", "--map-by", "slot", "--bind-to", "none", "--output", "tag",
        "--mca", "plm_ssh_agent", f"ssh -F {path}", "-x", "PYTHONUNBUFFERED",
        "-np", "1", "--host", "node1:1", "/a/python", "-m", "mpi4py", "t.py", "x",
        ":", "-np", "2", "--host", "node2:2", PY, "-m", "mpi4py", "t.py", "x",
    ]


def test_too_many_ranks_names_the_hostfile_and_slots():
    config = RunConfig(command=("t.py",), num_ranks=4, hosts=(HostSpec("a", 2), HostSpec("b", 1)),
                       host_source="hosts.txt", oversubscribe=False)
    with pytest.raises(LaunchError, match=r"^-np 4 is more than the 3 slots of hosts.txt; lower -np, add slots, or pass --oversubscribe$"):
        plan(config)
    capped = RunConfig(command=("t.py",), num_ranks=5, hosts=(HostSpec("a", 2, 2, source="hosts.txt:1"), HostSpec("b", 1)),
                       host_source="hosts.txt", oversubscribe=True)
    with pytest.raises(LaunchError, match=r"puts 3 ranks on a but hosts.txt:1 caps it at max_slots=2"):
        plan(capped)


def test_missing_script_and_command(tmp_path):
    (tmp_path / "there.py").write_text("")
    assert plan(local(command=("there.py",)), check_dir=str(tmp_path)).argv[-1] == "there.py"
    with pytest.raises(LaunchError, match=r"^script gone.py not found \(looked in .*\); check the path$"):
        plan(local(command=("gone.py",)), check_dir=str(tmp_path))
    with pytest.raises(LaunchError, match="command 'no-such-command-xyz' not found on PATH"):
        plan(local(command=("no-such-command-xyz",)), check_dir=str(tmp_path))
    with pytest.raises(LaunchError, match="-m needs a module name"):
        plan(local(command=("-m",)))


def test_find_mpirun_prefers_the_one_beside_python(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    beside = tmp_path / "bin" / "mpirun"
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_mpirun(str(tmp_path / "bin" / "python")) == str(beside)
    with pytest.raises(LaunchError, match=r"^no mpirun found next to this Python or on PATH: pip install"):
        find_mpirun(str(tmp_path / "python"))


def test_dry_run_text_and_json():
    result = plan(local(num_ranks=2), euid=1000)
    assert format_plan(result).splitlines()[:3] == ["/venv/bin/mpirun \\", "    -np 2 \\", "    --host localhost:2 \\"]
    assert format_plan(result).splitlines()[-3:] == ["rank  host                     local rank",
                                                     "   0  localhost                0", "   1  localhost                1"]
    data = result.to_dict()
    assert data["argv"] == list(result.argv) and data["rank_hosts"] == ["localhost", "localhost"]
    assert data["flavor"] == {"family": "openmpi", "version": "5.0.11", "major": 5}
    assert data["command_line"].endswith("-m mpi4py train.py --lr 0.1")


def test_split_tagged_lines():
    assert split_tagged_line("[1,2]<stdout>: hi  there", OMPI5) == [(2, "stdout", "hi  there")]
    assert split_tagged_line("[1,0]<stderr>: oops", OMPI5) == [(0, "stderr", "oops")]
    assert split_tagged_line("[1,3]<stdout>: x", OMPI4) == [(3, "stdout", " x")]
    assert split_tagged_line("prterun detected", OMPI5) == [(None, "stderr", "prterun detected")]
    assert split_tagged_line("[12]<asyncddp> hello [3] x", MPICH) == [(12, None, "hello [3] x")]
    # Open MPI 4 tags every chunk a rank writes: print("a", "b") unbuffered is several chunks,
    # and other ranks' chunks land in between.
    assert split_tagged_line("[1,1]<stdout>:a[1,2]<stdout>:c[1,1]<stdout>: [1,1]<stdout>:b", OMPI4) == [
        (1, "stdout", "a"), (2, "stdout", "c"), (1, "stdout", " "), (1, "stdout", "b")]


def test_output_joins_each_ranks_chunks_into_its_lines(tmp_path):
    import io

    from asyncddp.launcher.job import _Output

    out, err = io.StringIO(), io.StringIO()
    output = _Output(OMPI4, str(tmp_path), out, err)
    output.line("[1,1]<stdout>:a[1,2]<stdout>:c[1,1]<stdout>: [1,1]<stdout>:b")
    output.line("[1,2]<stdout>:d")
    output.line("[1,0]<stderr>:tail without newline[1,0]<stdout>:x[1,0]<stdout>:y")
    output.close()
    assert out.getvalue().splitlines() == ["[1] a b", "[2] cd", "[0] xy"]
    assert err.getvalue().splitlines() == ["[0] tail without newline"]
    assert (tmp_path / "rank.2.log").read_text() == "cd\n"


def test_find_failure_in_mpirun_messages():
    ompi5 = ("prterun detected that one or more processes exited with non-zero status,\n"
             "thus causing the job to be terminated. The first process to do so was:\n\n"
             "   Process name: [prterun-vm-5494@1,2]\n   Exit code:    7\n")
    ompi4 = "   Process name: [[63017,1],3]\n   Exit code:    9\n"
    abort = "MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD\n  Proc: [[1,1],1]\n  Errorcode: 5\n"
    signalled = "mpirun noticed that process rank 0 with PID 77 on node vm exited on signal 9 (Killed)."
    mpich = "=   RANK 2 PID 123 RUNNING AT vm\n=   KILLED BY SIGNAL\n=   EXIT STATUS: 7\n"
    assert find_failure(ompi5) == (2, 7)
    assert find_failure(ompi4) == (3, 9)
    assert find_failure(abort) == (1, 5)
    ompi4_abort = "MPI_ABORT was invoked on rank 2 in communicator MPI_COMM_WORLD\nwith errorcode 7.\n"
    assert find_failure(ompi4_abort) == find_failure(ompi4_abort, OMPI4) == (2, 7)
    assert find_failure(signalled) == (0, 137)
    assert find_failure(mpich) == (2, 7)
    assert find_failure("all good") is None


def test_debian_open_mpi_4_version_line():
    assert parse_mpi_version("mpirun.openmpi (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/\n") == \
        MpiFlavor("openmpi", "4.1.4", 4)


def test_ranks_of_another_mpi_load_its_library_for_mpi4py():
    config = local(num_ranks=2)
    ompi4 = MpiInstall("/usr/bin/mpirun.openmpi", OMPI4, None, "/usr/lib/x86_64-linux-gnu/libmpi.so.40")
    result = build_plan(config, ompi4, python=PY, euid=1000, environ={}, private_dir="/priv")
    assert result.env["MPI4PY_LIBMPI"] == "/usr/lib/x86_64-linux-gnu/libmpi.so.40" and result.links == {}
    assert ("-x", "MPI4PY_LIBMPI") in result.groups
    # Debian names MPICH's library libmpich.so.12; mpi4py's extension needs libmpi.so.12: a link.
    mpich = MpiInstall("/usr/bin/mpirun.mpich", MPICH, None, "/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    result = build_plan(config, mpich, python=PY, euid=1000, environ={"LD_LIBRARY_PATH": "/opt/lib"}, private_dir="/priv")
    assert result.env["MPI4PY_LIBMPI"] == "/usr/lib/x86_64-linux-gnu/libmpich.so.12"
    assert result.env["LD_LIBRARY_PATH"] == "/priv/mpi4py-lib:/opt/lib"
    assert result.links == {"/priv/mpi4py-lib/libmpi.so.12": "/usr/lib/x86_64-linux-gnu/libmpich.so.12"}
    assert ("-genvlist", "PYTHONUNBUFFERED,MPI4PY_LIBMPI,LD_LIBRARY_PATH") in result.groups
    assert "link /priv/mpi4py-lib/libmpi.so.12 -> /usr/lib/x86_64-linux-gnu/libmpich.so.12" in format_plan(result)
    # The user's own choice wins; a link on remote hosts cannot be made from here.
    mine = build_plan(config, mpich, python=PY, euid=1000, environ={"MPI4PY_LIBMPI": "/x.so"}, private_dir="/priv")
    assert "MPI4PY_LIBMPI" not in mine.env and mine.links == {}
    with pytest.raises(LaunchError, match=r"^mpi4py needs libmpi.so.12 but MPICH here is /usr/lib/x86_64-linux-gnu/"
                                          r"libmpich.so.12: on every host link"):
        build_plan(local(num_ranks=2, hosts=(HostSpec("node1", 2),)), mpich, python=PY, euid=1000, environ={},
                   private_dir="/priv")

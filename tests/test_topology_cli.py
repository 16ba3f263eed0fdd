"""``asyncddp topology show|draw|compare`` through the CLI's main, in-process (tests/cli.py: invoke)."""

import json

import pytest

from tests.cli import invoke

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cli(*args, check=True):
    done = invoke("topology", *args)  # reports computed in-process: nothing needs a process of its own
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_show_static_json():
    report = json.loads(_cli("show", "exp2", "-n", "16", "--json").stdout)
    assert report["kind"] == "static" and report["n"] == 16
    assert report["rho"] == pytest.approx(0.6)
    assert report["doubly_stochastic"] is True and report["regular"] is True
    assert report["ranks"][0]["send_ranks"] == [1, 2, 4, 8]
    assert report["ranks"][0]["src_weights"] == {"8": 0.2, "12": 0.2, "14": 0.2, "15": 0.2}
    assert report["degrees"]["max_in"] == 4


def test_show_dynamic_json_and_params():
    report = json.loads(_cli("show", "ceca", "-n", "6", "--json").stdout)
    assert report["period"] == 3 and report["rho"] < 1e-12
    assert [s["send_buffer"] for s in report["ranks"][0]["steps"]] == ["x", "aux", "x"]
    mesh = json.loads(_cli("show", "mesh", "-n", "6", "-p", "shape=3,2", "--json").stdout)
    assert mesh["ranks"][2]["send_ranks"] == [0, 3, 4]
    table = _cli("show", "one-peer-exp2", "-n", "8").stdout
    assert "step 2" in table and "→4 ←4" in table


def test_bad_name_lists_valid_ones():
    done = _cli("show", "exp3", "-n", "8", check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("asyncddp: error: unknown topology 'exp3'; valid names: exp2, exp,")
    assert "Traceback" not in done.stderr
    done = _cli("show", "hypercube", "-n", "6", check=False)
    assert done.returncode == 2 and "power-of-two" in done.stderr
    done = _cli("show", "ring", "-n", "6", "-p", "nonsense", check=False)
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr


def test_draw_writes_png(tmp_path):
    for name, extra in (("exp2", []), ("one-peer-exp2", []), ("ceca", ["--step", "1"])):
        out = tmp_path / f"{name}.png"
        done = _cli("draw", name, "-n", "12", "-o", str(out), *extra)
        assert str(out) in done.stdout
        data = out.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_compare_json_and_plot(tmp_path):
    out = tmp_path / "cmp.png"
    names = ["exp2", "ring", "one-peer-exp2", "ceca", "equi-dyn"]
    result = json.loads(_cli("compare", *names, "-n", "24", "--steps", "20", "-o", str(out), "--json").stdout)
    assert list(result["errors"]) == names
    assert all(len(e) == 21 and e[0] == pytest.approx(1.0) for e in result["errors"].values())
    assert result["steps_to_exact"]["ceca"] == 5  # ceil(log2 24)
    assert result["steps_to_exact"]["one-peer-exp2"] is None  # 24 is no power of two
    assert result["errors"]["exp2"][-1] < result["errors"]["ring"][-1]
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    names = ["one-peer-exp2", "inner-outer-exp2"]
    table = _cli("compare", *names, "-n", "16", "--steps", "4", "-p", "local_size=4").stdout
    assert "one-peer-exp2: exact after 4 steps" in table

"""Every subcommand runs from Python through its command's run(...), with the flags' names as keywords;
and the launch environment is read once, refusing an inconsistent one before anything is written."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, minimal_config

from ckptbench.cli.app import COMMANDS, load_command
from ckptbench.core.errors import UserError
from ckptbench.parallel import launch

V1_FIXTURE = REPO / "tests" / "fixtures" / "results_v1.json"


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """`run` called from Python: a one-test suite of the tiny model, one run."""
    root = tmp_path_factory.mktemp("commands")
    config = root / "suite.json"
    config.write_text(json.dumps(minimal_config()))
    status = load_command("run").run(config=config, output_dir=str(root / "out"), no_progress=True, seed=3)
    return status, root / "out"


def test_run_from_python(one_run, capsys):
    status, out = one_run
    assert status == 0
    document = json.loads((out / "results.json").read_text())
    assert document["kind"] == "results" and [t["name"] for t in document["tests"]] == ["baseline", "fast"]
    assert all(r["verified"] for t in document["tests"] for r in t["runs"])


def test_show_compare_and_list_models_from_python(one_run, tmp_path, capsys):
    _, out = one_run
    assert load_command("show").run(results=out / "results.json", output_dir=tmp_path, no_figures=True) == 0
    assert "baseline (baseline)" in capsys.readouterr().out
    assert load_command("compare").run(a=out / "results.json", b=[out / "results.json"]) == 0
    assert "within noise" in capsys.readouterr().out
    assert load_command("list-models").run() == 0
    assert "smollm2-135m" in capsys.readouterr().out
    assert load_command("show").run(results=V1_FIXTURE, output_dir=tmp_path) == 0  # an old file, figures drawn
    assert (tmp_path / "optimization_analysis.png").is_file()


def test_every_command_has_a_python_run_and_refuses_unknown_options():
    for name in COMMANDS:
        command = load_command(name)
        assert command.name == name and command.summary
        with pytest.raises(TypeError, match="no option 'nope'"):
            command.run(nope=1)
    with pytest.raises(UserError):  # bad input is a UserError from Python, as it is one line on the command line
        load_command("show").run(results=REPO / "no-such.json")


@pytest.mark.parametrize("env, needle", [
    ({"RANK": "0"}, "RANK is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
    ({"LOCAL_RANK": "0"}, "LOCAL_RANK is set but RANK and WORLD_SIZE are not"),
    ({"OMPI_COMM_WORLD_RANK": "1"}, "OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, "rank 1 is outside the world of 1"),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "local rank 3 is outside the 2 ranks of this host"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "local rank 1 is above the global rank 0"),
    ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "8 ranks on this host but 4 in the world"),
])
def test_an_inconsistent_launch_environment_is_refused(env, needle):
    with pytest.raises(UserError, match=needle):
        launch.detect(env)


def test_the_command_line_refuses_it_in_one_line_writing_nothing(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status, out, err = run_cli("--model", "tiny", "--output-dir", tmp_path / "out")
    assert status == 2 and out == "" and err.count("\n") == 1 and "WORLD_SIZE" in err
    assert not (tmp_path / "out").exists()

"""A checkpoint is data: whatever its config says, loading or evaluating it never runs code.

`weights_only` loading stops pickle payloads; these tests cover the other way in: a plain-data
config whose ``env.id`` names an entry point (``os:system``) that metarl would import and call.
"""

import shutil
from pathlib import Path

import pytest
import yaml

import metarl
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    assert main(["train", str(SMOKE), "--logdir", str(logdir), "--run-name", "good", "--no-progress"]) == 0
    return logdir / "good"


def _hostile(good_run: Path, directory: Path, env_id: str = "os:system") -> tuple[Path, Path]:
    """A plain-data checkpoint whose config would run ``touch MARKER`` if its env were made."""
    marker = directory / "MARKER"
    payload = load_checkpoint(good_run / "checkpoints" / "final.pt")
    payload["config"]["env"].update(id=env_id, kwargs={"command": f"touch {marker}"})
    for key in ("path", "format_version"):
        payload.pop(key)
    save_checkpoint(directory / "hostile.pt", payload)
    return directory / "hostile.pt", marker


def test_evaluate_refuses_a_checkpoint_whose_env_id_would_import_code(good_run, tmp_path, capsys):
    checkpoint, marker = _hostile(good_run, tmp_path)
    assert main(["evaluate", str(checkpoint), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "names env.id 'os:system', an entry point in module 'os'" in err
    assert "--trust-module os" in err and "Traceback" not in err
    assert not marker.exists()


def test_load_and_baselines_refuse_it_too(good_run, tmp_path, capsys):
    checkpoint, marker = _hostile(good_run, tmp_path)
    with pytest.raises(CheckpointError, match="trust_modules=\\['os'\\]"):
        metarl.load(checkpoint)
    assert main(["evaluate", str(good_run), "--baselines", f"evil={checkpoint}", "--out", str(tmp_path / "e")]) == 2
    assert "names env.id 'os:system'" in capsys.readouterr().err
    assert not marker.exists()


def test_resume_refuses_a_run_directory_that_names_an_untrusted_module(good_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    for file in (run / "checkpoints").iterdir():
        file.unlink()
    checkpoint, marker = _hostile(good_run, tmp_path)
    payload = load_checkpoint(checkpoint)
    payload["config"]["train"]["iterations"] = 10
    (run / "config.yaml").write_text(yaml.safe_dump(payload["config"]))
    shutil.copy(checkpoint, run / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(run)]) == 2
    assert "names env.id 'os:system'" in capsys.readouterr().err
    (run / "checkpoints" / "last.pt").unlink()  # a run stopped before its first checkpoint: its config.yaml
    assert main(["train", "--resume", str(run)]) == 2
    assert f"'{run / 'config.yaml'}' names env.id 'os:system'" in capsys.readouterr().err
    assert not marker.exists()


def test_an_unregistered_plain_id_is_refused_without_importing_anything(good_run, tmp_path):
    checkpoint, _ = _hostile(good_run, tmp_path, env_id="Nowhere/Unknown-v0")
    with pytest.raises(CheckpointError, match="not a registered Gymnasium environment"):
        metarl.load(checkpoint)


def test_a_trusted_module_is_imported(tmp_path, capsys, monkeypatch):
    """A run of a custom environment module: refused until the user trusts the module by name."""
    monkeypatch.chdir(ROOT)
    args = ["--logdir", str(tmp_path), "--run-name", "cart", "--no-progress", "--iterations", "1"]
    sizes = ["outer.tasks_per_batch=2", "inner.episodes_per_task=2", "evaluation.num_tasks=2"]
    assert main(["train", "experiments/custom_env_example.yaml", *args, *(x for s in sizes for x in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert f"metarl evaluate {tmp_path / 'cart'} --trust-module experiments.custom_env_example" in out
    assert main(["evaluate", str(tmp_path / "cart"), "--episodes", "2", "--adapt-steps", "1"]) == 2
    assert "--trust-module experiments.custom_env_example" in capsys.readouterr().err
    trusted = ["--trust-module", "experiments.custom_env_example"]
    assert main(["evaluate", str(tmp_path / "cart"), "--episodes", "2", "--adapt-steps", "1", *trusted]) == 0
    # The whole entry point may be trusted instead of its module.
    policy = metarl.load(tmp_path / "cart", trust_modules=["experiments.custom_env_example:Custom/SlipperyCart-v0"])
    assert policy.config.env.id == "experiments.custom_env_example:Custom/SlipperyCart-v0"

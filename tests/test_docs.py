"""The README's set-up commands are the ones CI runs and the ones the configs support."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("python3 -m venv")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_command():
    main_job, tests = readme_commands()[:2]
    assert "metarl train experiments/navigation_2d.yaml --evaluate" in main_job
    assert 'pip install -e ".[plot]"' in main_job  # the main job ends with its adaptation plot, eval.png
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci
    assert ".venv/bin/ruff check . && .venv/bin/ruff format --check ." in ci
    assert (ROOT / "experiments" / "navigation_2d.yaml").is_file()

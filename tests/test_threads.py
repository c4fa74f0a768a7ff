"""The thread policy (modrec.threads): how many threads torch computes with in each
kind of modrec process, and that idle OpenMP threads sleep rather than spin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modrec import threads
from modrec.cli import main


def test_a_service_worker_computes_with_one_thread_and_other_commands_with_the_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.choose_threads(None, serving=True) == 1
    assert threads.choose_threads(None, serving=False) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun started 3 processes here
    assert threads.choose_threads(None, serving=False) == 2
    monkeypatch.setenv(threads.ENV, "5")
    assert threads.choose_threads(None, serving=True) == 5
    assert threads.choose_threads(4, serving=True) == 4  # --threads wins


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_refused_by_name(monkeypatch: pytest.MonkeyPatch,
                                               text: str) -> None:
    monkeypatch.setenv(threads.ENV, text)
    with pytest.raises(ValueError, match=f"{threads.ENV}='{text}'"):
        threads.choose_threads(None, serving=False)


def test_the_cgroup_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert threads.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_quota(v1) is None
    assert threads.cgroup_cpu_quota(tmp_path / "absent") is None
    assert 1 <= threads.usable_cores() <= (os.cpu_count() or 1)


def _wait_settings_in_a_new_process(env: dict[str, str]) -> str:
    code = ("import modrec, os; print(os.environ.get('OMP_WAIT_POLICY'), "
            "os.environ.get('GOMP_SPINCOUNT'))")
    return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_importing_modrec_first_makes_idle_threads_spin_briefly_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k not in threads.USER_WAIT_SETTINGS}
    assert _wait_settings_in_a_new_process(env) == f"None {threads.SPIN_COUNT}"
    assert _wait_settings_in_a_new_process({**env, "OMP_WAIT_POLICY": "PASSIVE"}) == \
        "PASSIVE None"
    assert _wait_settings_in_a_new_process({**env, "GOMP_SPINCOUNT": "5"}) == "None 5"


def test_threads_sets_torch_threads_for_a_command(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    import torch

    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["datasets", "--json"]) == 0
        assert torch.get_num_threads() == threads.usable_cores()
        # the threads are set before the verb runs (this one then fails: no such run)
        assert main(["evaluate", str(tmp_path / "no-run"), "--threads", "1"]) == 2
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(threads.ENV, "2")
        assert main(["datasets", "--json"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["datasets", "--threads", "2"]) == 2  # not a verb that computes
        assert "unrecognized arguments: --threads" in capsys.readouterr().err
        monkeypatch.setenv(threads.ENV, "0")
        assert main(["datasets"]) == 2
        assert "MODREC_THREADS='0'" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def _training_log_in_a_new_process(env: dict[str, str], torch_first: bool) -> str:
    """What `setup` (the start of every training) logs in a new Python process that
    imported torch before or after modrec, computing with 2 threads."""
    imports = "import torch, modrec" if torch_first else "import modrec, torch"
    code = (f"{imports}; import logging; logging.basicConfig(); torch.set_num_threads(2); "
            "from modrec.threads import warn_if_default_wait as w; w(); w()")
    return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True).stderr


def test_training_says_once_when_torch_came_first_and_its_threads_spin_long() -> None:
    env = {k: v for k, v in os.environ.items() if k not in threads.USER_WAIT_SETTINGS}
    said = _training_log_in_a_new_process(env, torch_first=True)
    assert said.count("torch was imported before modrec") == 1, said
    assert "GOMP_SPINCOUNT=1000" in said
    assert _training_log_in_a_new_process(env, torch_first=False) == ""
    chose = {**env, "OMP_WAIT_POLICY": "PASSIVE"}  # the user chose: nothing to say
    assert _training_log_in_a_new_process(chose, torch_first=True) == ""


def test_modrec_threads_reaches_a_training_started_from_python(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from modrec.config import build_config
    from modrec.train import setup

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_applied", False)  # as in a program that ran no command
    monkeypatch.setenv(threads.ENV, "1")
    try:
        torch.set_num_threads(2)
        setup(build_config("ml-100k", "sasrec", overrides=["train.epochs=1"]),
              tmp_path / "run", show_progress=False)
        assert torch.get_num_threads() == 1
        # A command's choice (--threads, applied before its verb) is not overridden.
        monkeypatch.setattr(threads, "_applied", True)
        torch.set_num_threads(2)
        setup(build_config("ml-100k", "sasrec", overrides=["train.epochs=1"]),
              tmp_path / "run2", show_progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

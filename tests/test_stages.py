"""The study context the quickstart and reproduce share (pipeline.workflows.stages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.workflows.stages import StudyContext


def test_a_study_tracks_inside_its_own_folder_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    ctx = StudyContext.open(Path("study"), None, None, None)
    assert ctx.out == tmp_path / "study" and ctx.shards == tmp_path / "study" / "shards"
    assert ctx.uri == f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert StudyContext.open(Path("study"), None, None, None).uri == f"sqlite:///{tmp_path / 'env.db'}"
    flag = f"sqlite:///{tmp_path / 'flag.db'}"
    assert StudyContext.open(Path("study"), flag, None, None).uri == flag  # the flag wins over the environment

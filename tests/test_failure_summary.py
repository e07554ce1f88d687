"""Why trials failed, in the one line that sweep, quickstart and reproduce end on."""

from __future__ import annotations

from pipeline.training.sweep import failure_summary


def test_a_clear_error_of_ours_leads_and_needs_no_resume() -> None:
    shard = "shard train/000003.tar, sample 00012: its features are not finite; the shard is damaged: prepare again"
    state = {
        "trials": {
            "a": {"status": "failed", "reason": "ray.exceptions.RayTaskError: TrainingFailedError"},
            "b": {"status": "failed", "reason": f"pipeline.infra.errors.UserError: {shard}"},
        }
    }
    assert failure_summary(state, ["a", "b"]) == f"trial b stopped: {shard}"


def test_other_failures_name_the_first_reason() -> None:
    state = {"trials": {"a": {"status": "failed", "reason": "FloatingPointError: loss is NaN"}, "b": {}}}
    assert failure_summary(state, ["a", "b"]) == "the first failure: a: FloatingPointError: loss is NaN; "
    assert failure_summary({"trials": {}}, ["a"]) == ""

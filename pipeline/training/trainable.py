"""The Ray Tune trial of a sweep: one Ray Train ``TorchTrainer`` whose workers run
:func:`pipeline.training.loop.train_loop_per_worker` (DDP: gloo on CPUs, NCCL on GPUs)."""

from __future__ import annotations

from typing import Any

from pipeline.infra import storage
from pipeline.training.ddp import collective_backend
from pipeline.training.loop import train_loop_per_worker
from pipeline.training.trial import TrialConfig


def trial_trainable(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: run one trial's ``TorchTrainer`` and forward its reports to Tune."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.infra.ray_runtime import train_logging_config

    config = tune_config["trial"]
    trial = TrialConfig.from_dict(config)
    r = trial.resources
    storage_path, storage_fs = storage.ray_storage(trial.storage_path)
    resources = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        resources["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend=collective_backend(r.use_gpu)),
        scaling_config=ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=r.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=trial.trial_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            logging_config=train_logging_config(),  # Ray Train's INFO lines would bury the sweep's table
        ),
    )
    trainer.fit()

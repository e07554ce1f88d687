"""One trial's configuration: what Ray Tune hands to a trial and Ray Train to each worker.

On the wire (Tune's ``param_space``, Train's ``train_loop_config``, MLflow's
``config/resolved_config.json``) it is a flat mapping of plain values; each worker builds a
:class:`TrialConfig` from it once (:meth:`TrialConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.training.faults import Faults
from pipeline.training.settings import Resources, SweepSettings, TrainingSettings


@dataclass(frozen=True)
class TrialConfig:
    """One (model, configuration, λ) trial with the sweep's settings."""

    trial_name: str
    model: str
    config: dict[str, int]  # the codec's hyperparameters besides N (dvcm.registry): M1, M2, H or M
    lmbda: float
    training: TrainingSettings
    resources: Resources
    storage_path: str  # Ray Train's storage for this trial's checkpoints
    yolo_provenance: dict[str, Any]
    faults: Faults | None = None  # test-only (pipeline.training.faults)
    init_checkpoint: str | None = None  # warm start: the weights of this dvcm checkpoint (a neighbouring λ's)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping that travels through Ray and is logged to MLflow."""
        return {
            **dataclasses.asdict(self.training),
            **dataclasses.asdict(self.resources),
            "trial_name": self.trial_name,
            "model": self.model,
            **self.config,
            "lmbda": self.lmbda,
            "storage_path": self.storage_path,
            "yolo_provenance": dict(self.yolo_provenance),
            "faults": dataclasses.asdict(self.faults) if self.faults else None,
            "init_checkpoint": self.init_checkpoint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        """Inverse of :meth:`to_dict`."""

        def pick(kind: type) -> Any:
            return kind(**{f.name: d[f.name] for f in dataclasses.fields(kind) if f.name in d})

        from dvcm.registry import codec_spec

        config = {h.name: int(d[h.name]) for h in codec_spec(d["model"]).hyperparameters}
        return cls(
            d["trial_name"],
            d["model"],
            config,
            float(d["lmbda"]),
            pick(TrainingSettings),
            pick(Resources),
            d["storage_path"],
            dict(d["yolo_provenance"]),
            Faults(**d["faults"]) if d.get("faults") else None,
            d.get("init_checkpoint"),
        )


def trial_configs(
    grid: list[dict[str, Any]],
    settings: SweepSettings,
    shards: str,
    storage_path: str,
    yolo_provenance: dict[str, Any],
    faults: dict[str, dict[str, Any] | None],
) -> list[TrialConfig]:
    """One :class:`TrialConfig` per grid entry (``shards`` resolved, ``faults`` by trial name).

    An entry may carry its own ``seed`` (several seeds in one sweep), ``epochs`` (its cap), ``gamma`` (a γ grid)
    and an ``init_checkpoint`` to start from."""
    training = dataclasses.replace(settings.training, shards=shards)
    return [
        TrialConfig(
            t["trial_name"],
            t["model"],
            dict(t["config"]),
            t["lmbda"],
            dataclasses.replace(
                training,
                seed=int(t.get("seed", training.seed)),
                epochs=int(t.get("epochs", training.epochs)),
                gamma=float(t.get("gamma", training.gamma)),
            ),
            settings.resources,
            storage_path,
            yolo_provenance,
            Faults(**faults[t["trial_name"]]) if faults.get(t["trial_name"]) else None,
            t.get("init_checkpoint"),
        )
        for t in grid
    ]

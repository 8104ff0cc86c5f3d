"""hydra/launcher=batched: a sweep's jobs that differ only in numbers train as one computation.

Hydra finds this module by scanning the `hydra_plugins` namespace package and imports it on
every start, so it imports nothing heavy; the work is in _core (and polyexp.sweeps.batched).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.polyexp_batched_launcher.batched_launcher.BatchedLauncher"
    max_batch: int = 1024  # the most jobs trained as one batch (bounds memory: B x data.n)


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="polyexp"
)


class BatchedLauncher(Launcher):
    def __init__(self, max_batch: int = 1024) -> None:
        self.max_batch = max_batch
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.polyexp_batched_launcher import _core

        return _core.launch(self, job_overrides, initial_job_idx)

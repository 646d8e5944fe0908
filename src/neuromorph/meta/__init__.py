"""Learning-to-learn: MAML / first-order MAML / ANIL (readout-only) / Reptile on ``torch.func``
(:mod:`.maml`) and N-way K-shot task sampling (:mod:`.tasks`)."""

from .maml import (
    InnerLoop,
    QueryResult,
    adapt,
    anil_query,
    find_readout,
    maml_query,
    meta_batch,
    params_of,
    readout_features,
    reptile_update,
)
from .tasks import ClassPool, FewShotTask, check_task, sample_task, sample_tasks, stack_tasks

__all__ = [
    "ClassPool",
    "FewShotTask",
    "InnerLoop",
    "QueryResult",
    "adapt",
    "anil_query",
    "check_task",
    "find_readout",
    "maml_query",
    "meta_batch",
    "params_of",
    "readout_features",
    "reptile_update",
    "sample_task",
    "sample_tasks",
    "stack_tasks",
]

"""Distillation: traffic -> teacher labels -> LoRA student -> eval gate -> GGUF -> routed traffic.

- `FlywheelSpec` / `load_flywheel`: the flywheel file; `Flywheel`: its stages (`collect`,
  `label`, `train`, `evaluate`, `export`, `route`) and `run()`, each recorded in `DistillStore`.
- `RoutePolicy`: the gateway router's policy (canary share, escalation, online comparison);
  `promote`, `rollback`, `open_route`.
- `served_models` / `register_providers`: distilled models served by name (`distilled`
  provider) and the `answer-key` teacher.

Importing this package loads no model and no torch; training and export import them when run.
This package never imports the gateway: the gateway's routes and app wiring build on it.
"""

from llmforge.distill.config import FlywheelSpec, load_flywheel
from llmforge.distill.flywheel import Flywheel, FlywheelReport, GateFailedError, gate_line
from llmforge.distill.policy import RoutePolicy, open_route, promote, rollback
from llmforge.distill.serving import catalog_for, register_providers, served_models
from llmforge.distill.store import (
    DistillStore,
    Feedback,
    ModelVersion,
    OnlineComparison,
    Route,
    StageRun,
)

__all__ = [
    "DistillStore",
    "Feedback",
    "Flywheel",
    "FlywheelReport",
    "FlywheelSpec",
    "GateFailedError",
    "ModelVersion",
    "OnlineComparison",
    "Route",
    "RoutePolicy",
    "StageRun",
    "catalog_for",
    "gate_line",
    "load_flywheel",
    "open_route",
    "promote",
    "register_providers",
    "rollback",
    "served_models",
]

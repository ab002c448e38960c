"""The training engine shared by every task: loop, AMP, DDP, checkpoints, resume, logging, configs."""

from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .config import (
    ConfigError,
    apply_overrides,
    build_config,
    config_to_dict,
    load_config,
    packaged_config,
    packaged_configs,
    save_config,
)
from .curves import curves_figure, plot_curves
from .distributed import (
    DistInfo,
    ResumableSampler,
    SeededSamples,
    all_reduce,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from .optim import build_adamw, layer_id, param_groups, set_group_lrs
from .resources import add_threads_arg, available_cores, default_threads, fit_workers, set_threads
from .runs import RunFolderError, avoid_inputs, make_output_dir, prepare_run_folder
from .trainer import Trainer, TrainerConfig, collate_skip_none, setup_logging, write_json

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "DistInfo",
    "ResumableSampler",
    "RunFolderError",
    "SeededSamples",
    "Trainer",
    "TrainerConfig",
    "add_threads_arg",
    "all_reduce",
    "available_cores",
    "apply_overrides",
    "avoid_inputs",
    "barrier",
    "build_adamw",
    "build_config",
    "cleanup_distributed",
    "collate_skip_none",
    "config_to_dict",
    "curves_figure",
    "default_threads",
    "fit_workers",
    "init_distributed",
    "layer_id",
    "load_config",
    "make_output_dir",
    "packaged_config",
    "packaged_configs",
    "param_groups",
    "prepare_run_folder",
    "plot_curves",
    "rng_state",
    "save_config",
    "set_group_lrs",
    "set_rng_state",
    "set_threads",
    "setup_logging",
    "write_json",
]

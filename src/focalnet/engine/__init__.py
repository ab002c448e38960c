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
from .outputs import OutputPathError, avoid_inputs, output_paths, refuse_input_overwrite
from .resources import add_threads_arg, available_cores, default_threads, fit_workers, set_threads
from .runs import (
    RunFolderError,
    lock_run_folder,
    make_output_dir,
    prepare_run_folder,
    run_folder_lock,
    unlock_run_folder,
)
from .trainer import Trainer, TrainerConfig, collate_skip_none, plot_curves, setup_logging, write_json

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "DistInfo",
    "OutputPathError",
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
    "default_threads",
    "fit_workers",
    "init_distributed",
    "layer_id",
    "load_config",
    "lock_run_folder",
    "make_output_dir",
    "output_paths",
    "packaged_config",
    "packaged_configs",
    "param_groups",
    "prepare_run_folder",
    "plot_curves",
    "refuse_input_overwrite",
    "rng_state",
    "run_folder_lock",
    "save_config",
    "set_group_lrs",
    "set_rng_state",
    "set_threads",
    "setup_logging",
    "unlock_run_folder",
    "write_json",
]

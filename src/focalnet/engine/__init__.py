"""The training engine shared by every task: loop, AMP, DDP, checkpoints, resume, logging, configs."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `import focalnet...` loads no torch
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
        gather_names,
        init_distributed,
        resolve_device,
    )
    from .files import RunFolderError, finite_json, make_output_dir, write_json
    from .optim import build_adamw, layer_id, param_groups, set_group_lrs
    from .options import add_shared_options, add_threads_arg, check_device, config_from_args, flag_values, off
    from .outputs import OutputPathError, OutputRule, avoid_inputs, output_paths, refuse_input_overwrite
    from .resources import available_cores, default_threads, fit_workers, keep_freed_memory, set_threads
    from .runs import lock_run_folder, prepare_run_folder, run_folder_lock, unlock_run_folder
    from .trainer import Trainer, TrainerConfig, amp_dtype, collate_skip_none, setup_logging

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "DistInfo",
    "OutputPathError",
    "OutputRule",
    "ResumableSampler",
    "RunFolderError",
    "SeededSamples",
    "Trainer",
    "TrainerConfig",
    "add_shared_options",
    "add_threads_arg",
    "all_reduce",
    "amp_dtype",
    "apply_overrides",
    "available_cores",
    "avoid_inputs",
    "barrier",
    "build_adamw",
    "build_config",
    "check_device",
    "cleanup_distributed",
    "collate_skip_none",
    "config_from_args",
    "config_to_dict",
    "curves_figure",
    "default_threads",
    "finite_json",
    "fit_workers",
    "gather_names",
    "flag_values",
    "init_distributed",
    "keep_freed_memory",
    "layer_id",
    "load_config",
    "lock_run_folder",
    "make_output_dir",
    "off",
    "output_paths",
    "packaged_config",
    "packaged_configs",
    "param_groups",
    "plot_curves",
    "prepare_run_folder",
    "resolve_device",
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

lazy_exports(__name__)

"""examples/accelerate/*.yaml as accelerate itself reads them: its loader, its launch-argument checks and the
plugins its training processes build from the launcher's environment.

No process is started and nothing needs a GPU or DeepSpeed, so this covers what these machines can check of
the multi_gpu, FSDP and DeepSpeed files: that every key is one accelerate knows and lands where intended. The
multi_cpu file is also run for real with 2 processes in tests/test_tune.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
NAMES = ["multi_cpu", "multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]


def launch_args(name: str):
    """What `accelerate launch --config_file <name>.yaml -m tunelens tune` works from, after its own checks."""
    argv = ["--config_file", str(CONFIGS / f"{name}.yaml"), "-m", "tunelens", "tune"]
    return _validate_launch_command(launch_command_parser().parse_args(argv))


def launcher_env(args, defaults) -> dict[str, str]:
    """The environment the launcher would hand each training process (only what it adds or changes); as the
    launcher does, it also fills in args' torch.distributed.run settings (nproc_per_node, master_port)."""
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_the_folder_holds_exactly_the_documented_configs():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_key_is_one_accelerate_knows(name):
    """accelerate's loader rejects an unknown top-level key but copies fsdp_config / deepspeed_config entries onto
    the launch arguments unchecked, so a misspelt nested key would be silently ignored: each must be a launch
    argument. The header names the exact command and what was tested."""
    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    known = {a.dest for a in launch_command_parser()._actions}
    for key in list(config.fsdp_config) + list(config.deepspeed_config):
        assert key in known, f"{path.name}: {key} is not an accelerate launch setting"
    header = path.read_text().split("\ncompute_environment:")[0]
    assert f"accelerate launch --config_file examples/accelerate/{name}.yaml -m tunelens tune" in header
    assert "Tested here:" in header
    assert config.num_processes == 2 and config.num_machines == 1 and config.main_process_port == 0


def test_multi_cpu_starts_two_processes_on_the_cpu():
    """MULTI_CPU would go to accelerate's simple launcher (one process without mpirun); this file must reach the
    torch.distributed.run launcher with 2 processes on a free port."""
    args, config, _ = launch_args("multi_cpu")
    assert config.distributed_type == DistributedType.MULTI_GPU and config.use_cpu
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    launcher_env(args, config)
    assert args.nproc_per_node == "2" and args.master_port not in (None, "0", "29500")


def test_multi_gpu_is_plain_ddp():
    args, config, _ = launch_args("multi_gpu")
    assert config.distributed_type == DistributedType.MULTI_GPU and not config.use_cpu
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    assert args.gpu_ids == "all"


def test_fsdp_is_fsdp2_saving_a_full_state_dict():
    args, config, _ = launch_args("fsdp")
    assert config.distributed_type == DistributedType.FSDP and args.use_fsdp
    with patch_environment(**launcher_env(args, config)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.transformer_cls_names_to_wrap is None, "layer classes come from the model's _no_split_modules"
    assert plugin.cpu_ram_efficient_loading is False and plugin.reshard_after_forward is True


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_stage_and_consolidated_save(name, stage):
    """ZeRO-3 must gather its partitioned weights at save (stage3_gather_16bit_weights_on_model_save), or the final
    save is a DeepSpeed checkpoint instead of a model; accumulation and clipping are left to tunelens' settings."""
    args, config, _ = launch_args(name)
    assert config.distributed_type == DistributedType.DEEPSPEED and args.use_deepspeed
    with patch_environment(**launcher_env(args, config)):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == zero["stage"] == stage
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"
    assert not plugin.zero3_init_flag

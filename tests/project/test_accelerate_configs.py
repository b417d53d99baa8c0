"""The accelerate configs in configs/accelerate/ load with accelerate's own loader, pass
its launch-time checks, and (e2e) two gloo processes on the CPU really form one group.

`_validate_launch_command` is accelerate's private pre-launch step; accelerate is pinned
to 1.15.* in pyproject.toml, so a rename shows up here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"

# name -> (distributed_type, num_processes, use_cpu)
EXPECTED = {
    "single_gpu": (DistributedType.NO, 1, False),
    "multi_gpu": (DistributedType.MULTI_GPU, 2, False),
    "fsdp": (DistributedType.FSDP, 2, False),
    "cpu_1proc": (DistributedType.NO, 1, True),
    "cpu_2proc": (DistributedType.MULTI_GPU, 2, True),  # torchrun launcher; see the file
}


def validated_args(name: str):
    """Parse `accelerate launch --config_file <name> train.py` as the CLI would."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return args


def test_every_shipped_config_is_covered():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # unknown keys raise here
    dist_type, num_processes, use_cpu = EXPECTED[name]
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == dist_type
    assert cfg.num_processes == num_processes
    assert cfg.use_cpu is use_cpu
    assert cfg.num_machines == 1
    # Precision belongs to params.yaml (train.precision); the code passes it to Accelerator().
    assert cfg.mixed_precision == "no"
    # A sweep pins runs to GPUs with CUDA_VISIBLE_DEVICES; a gpu_ids list would override it.
    assert cfg.gpu_ids in (None, "all")


@pytest.mark.parametrize("name", ["single_gpu", "cpu_1proc"])
def test_single_process_configs_use_the_simple_launcher(name):
    args = validated_args(name)
    assert not args.multi_gpu and not args.use_fsdp
    cmd, env = prepare_simple_launcher_cmd_env(args)
    assert cmd[-1] == "train.py"
    assert env["ACCELERATE_USE_CPU"] == str(EXPECTED[name][2])
    assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # left alone


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp", "cpu_2proc"])
def test_multi_process_configs_launch_two_local_processes(name):
    args = validated_args(name)
    assert args.multi_gpu or args.use_fsdp
    env = prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "2"
    assert int(args.main_process_port) > 0  # 0 in the file: a free port is picked
    assert (env.get("ACCELERATE_USE_FSDP") == "true") == (name == "fsdp")


def test_fsdp_config_reaches_the_processes():
    env = prepare_multi_gpu_env(validated_args("fsdp"))
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"


RANK_SCRIPT = """
import json, sys
from pathlib import Path
from accelerate import Accelerator
import torch

accelerator = Accelerator()
state = accelerator.state
total = accelerator.reduce(torch.tensor([float(state.process_index + 1)]), reduction="sum")
report = {"rank": state.process_index, "world_size": state.num_processes,
          "distributed_type": str(state.distributed_type), "backend": state.backend, "sum": total.item()}
# One file per rank: the two processes' stdout lines can interleave.
Path(sys.argv[1], f"rank{state.process_index}.json").write_text(json.dumps(report))
# Destroys the process group; without it gloo can abort one process at exit (SIGABRT).
accelerator.end_training()
"""


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_cpu_2proc_runs_two_gloo_processes(tmp_path):
    script, reports_dir = tmp_path / "ranks.py", tmp_path / "reports"
    script.write_text(RANK_SCRIPT)
    reports_dir.mkdir()
    env = dict(os.environ, ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CONFIGS / "cpu_2proc.yaml"),
            str(script),
            str(reports_dir),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [json.loads(p.read_text()) for p in sorted(reports_dir.glob("rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1], proc.stdout + proc.stderr
    for r in reports:
        assert r["world_size"] == 2
        assert r["distributed_type"] == str(DistributedType.MULTI_CPU)
        assert r["backend"] == "gloo"
        assert r["sum"] == 3.0  # 1 + 2: the all-reduce crossed processes

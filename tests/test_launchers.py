"""Launches past one process, on this CPU: a worker lost under torchrun's elastic agent, two
"machines" of the multi-node Accelerate config on localhost, and the Slurm script's commands.

- Elastic: `torchrun --max-restarts 1` on 2 gloo ranks runs a two-phase recipe; rank 1 is
  killed by SIGKILL right after the world model's first checkpoint. The agent restarts both
  workers; the runner reuses the finished encoder phase and resumes the world model from that
  checkpoint with no flag, and the run ends bitwise equal to an uninterrupted launch. The
  control: the steps each attempt ran (a restart that ignored the checkpoint would run them
  all again, and one that ignored the finished phase would train the encoder again).
- Two machine ranks: `accelerate launch --config_file recipes/launch/multi_node.yaml` started
  twice (`--machine_rank 0` and `1`, one CPU process each) equals one process at the global
  batch; the control, one process at the per-rank batch, differs.
- Slurm: `recipes/launch/slurm_multi_node.sh` with `SLURM_*` set and stub `srun` / `scontrol` /
  `accelerate`: the command each node would run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _builders import TINY_PHASE_MODEL
from safetensors.torch import load_file

from lewm_hf import metric_keys as K
from lewm_hf.tasks.runner import run_recipe

REPO = Path(__file__).resolve().parents[1]
ELASTIC_SCRIPT = REPO / "tests" / "_dist_scripts" / "elastic_recipe.py"
TRAIN_SCRIPT = REPO / "recipes" / "train.py"
MULTI_NODE_CONFIG = REPO / "recipes" / "launch" / "multi_node.yaml"
SLURM_SCRIPT = REPO / "recipes" / "launch" / "slurm_multi_node.sh"

# Two gloo ranks against one process at the global batch (SGD, see tests/_dist_scripts/common.py):
# the DDP parity tolerance of tests/test_distributed.py.
PARITY_ATOL = 1e-5
CONTROL_MIN_DIFF = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")

ENCODER = {
    "name": "encoder",
    "task": "lm",
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "learning_rate": 3e-3,
    "warmup_steps": 0,
    "max_steps": 4,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "save_strategy": "no",
    "gate_decoding": "sample",
    "gate_log_other_decoding": False,
    "gate_num_sequences": 16,
    "gate_edge_threshold": 0.0,
    "gate_rule_threshold": 0.0,
    "gate_min_rule_checks": 0,
}

WORLD_MODEL = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": "previous",
    "encoder_mode": "train",
    **TINY_PHASE_MODEL,
    "dropout": 0.1,
    "num_clips": 160,
    "eval_clips": 32,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "max_steps": 6,
    "lr_schedule": "wsd",
    "warmup_steps": 2,
    "learning_rate": 3e-3,
    "save_strategy": "steps",
    "save_steps": 3,
    "eval_strategy": "no",
    "run_evaluation": False,
}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of a launched process: this checkout first on the path, one thread."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / K.SAFE_WEIGHTS_FILE))


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------
# A lost worker under torchrun's elastic agent


def start_elastic_launch(folder: Path, cache: str, write_walk_recipe, kill: bool):
    """Start the two-phase recipe under `torchrun --max-restarts 1` (2 ranks); returns the
    process and its record folder."""
    recipe = write_walk_recipe(folder, cache, [dict(ENCODER), dict(WORLD_MODEL)])
    records = folder / "records"
    # Restarted gloo workers need a rendezvous store of their own (`elastic_launch`).
    env = {**child_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    if kill:
        env["LEWM_TEST_KILL_PHASE"] = "world_model"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        str(ELASTIC_SCRIPT),
        str(records),
        "--config",
        str(recipe),
    ]
    log = open(folder / "torchrun.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, records, folder / "torchrun.log"


def wait_all(procs) -> None:
    try:
        for proc, _, log in procs:
            assert proc.wait(timeout=600) == 0, log.read_text()[-6000:]
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()


def test_lost_worker_restarts_and_resumes_bitwise(tmp_path, cache_dir, write_walk_recipe):
    # The corpus is built (and cached) once before the two launches run side by side.
    write_walk_recipe(tmp_path / "build", cache_dir, [dict(WORLD_MODEL, encoder_path=None)])
    run_recipe(
        tmp_path / "build" / "recipe.yaml",
        [("max_steps", 1), ("warmup_steps", 0), ("save_strategy", "no")],
    )
    launches = [
        start_elastic_launch(tmp_path / name, cache_dir, write_walk_recipe, kill=name == "killed")
        for name in ("killed", "full")
    ]
    wait_all(launches)
    killed, full = launches[0][1], launches[1][1]

    # The uninterrupted launch ran once: each phase from step 0, all its steps.
    for rank in (0, 1):
        assert read_json(full / f"attempt0_rank{rank}_world_model.json") == {
            "begin": 0,
            "steps": [1, 2, 3, 4, 5, 6],
        }
    assert not list(full.glob("attempt1_*"))

    # The killed launch: attempt 0 ran the encoder and died at the world model's checkpoint-3
    # (no record of a finished world model); attempt 1 did not train the encoder again and
    # resumed the world model at step 3, running steps 4-6 only.
    names = sorted(p.name for p in killed.iterdir())
    assert names == [
        "attempt0_rank0_encoder.json",
        "attempt0_rank1_encoder.json",
        "attempt1_rank0_world_model.json",
        "attempt1_rank1_world_model.json",
    ], names
    for rank in (0, 1):
        resumed = read_json(killed / f"attempt1_rank{rank}_world_model.json")
        assert resumed == {"begin": 3, "steps": [4, 5, 6]}, resumed

    # Bitwise equal to the uninterrupted launch: weights, curves and the summary's numbers.
    run_k, run_f = tmp_path / "killed" / "run", tmp_path / "full" / "run"
    for phase in ("encoder", "world_model"):
        wk, wf = weights(run_k / phase), weights(run_f / phase)
        assert wk.keys() == wf.keys() and all(torch.equal(wk[k], wf[k]) for k in wk), phase
    result_k = read_json(run_k / "world_model" / K.RESULT_FILE)
    result_f = read_json(run_f / "world_model" / K.RESULT_FILE)
    for name in (K.TRAIN_LOSS, K.PRED_LOSS, K.REG_LOSS):
        assert result_k["curves"][name] == result_f["curves"][name], name
    assert result_k["curves"][K.TRAIN_LOSS]["step"] == [1, 2, 3, 4, 5, 6]
    summary_k = read_json(run_k / K.SUMMARY_FILE)["phases"]
    summary_f = read_json(run_f / K.SUMMARY_FILE)["phases"]
    for phase in ("encoder", "world_model"):
        # Everything but the run's own paths and wall times.
        k, f = (
            {key: v for key, v in s[phase].items() if "path" not in key and "dir" not in key}
            for s in (summary_k, summary_f)
        )
        k.pop("wall_time_s"), f.pop("wall_time_s")
        assert k == f, phase
    assert summary_k["world_model"]["global_step"] == 6


# ---------------------------------------------------------------------------------------------
# Two machine ranks of the multi-node config, on localhost

# The world model of the elastic test, deterministic (no dropout) and with SGD, whose updates
# depend on the global batch's gradient alone (see DISTRIBUTED_ARGS in _dist_scripts/common.py).
PARITY_PHASE = {
    **WORLD_MODEL,
    "encoder_path": None,
    "dropout": 0.0,
    "optim": "sgd",
    "learning_rate": 0.05,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "save_strategy": "no",
}


def test_two_machine_ranks_equal_one_process(tmp_path, cache_dir, write_walk_recipe):
    per_rank = PARITY_PHASE["per_device_train_batch_size"]
    two = write_walk_recipe(tmp_path / "two", cache_dir, [dict(PARITY_PHASE)])
    one = write_walk_recipe(
        tmp_path / "one", cache_dir, [dict(PARITY_PHASE, per_device_train_batch_size=2 * per_rank)]
    )
    control = write_walk_recipe(tmp_path / "control", cache_dir, [dict(PARITY_PHASE)])
    run_recipe(one)  # also builds the corpus the two machines then read from the cache

    port = free_port()
    machines = []
    for rank in (0, 1):
        cmd = [
            *(sys.executable, "-m", "accelerate.commands.launch"),
            *("--config_file", str(MULTI_NODE_CONFIG)),
            *("--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)),
            *("--main_process_ip", "127.0.0.1", "--main_process_port", str(port)),
            # The config's bf16 is for GPUs; the parity check is in float32.
            *("--mixed_precision", "no"),
            *(str(TRAIN_SCRIPT), "--config", str(two)),
        ]
        log = tmp_path / f"machine{rank}.log"
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=child_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT
        )
        machines.append((proc, None, log))
    run_recipe(control)  # one process at the per-rank batch, while the machines train
    wait_all(machines)

    out_two, out_one = tmp_path / "two" / "run" / "world_model", tmp_path / "one" / "run"
    out_one, out_control = out_one / "world_model", tmp_path / "control" / "run" / "world_model"
    result_two, result_one = (read_json(o / K.RESULT_FILE) for o in (out_two, out_one))
    for name in (K.TRAIN_LOSS, K.PRED_LOSS, K.REG_LOSS):
        two_curve, one_curve = result_two["curves"][name], result_one["curves"][name]
        assert two_curve["step"] == one_curve["step"] == [1, 2, 3, 4, 5, 6], name
        diff = max(abs(a - b) for a, b in zip(two_curve["value"], one_curve["value"]))
        assert diff < PARITY_ATOL, (name, diff)
    assert max_weight_diff(weights(out_two), weights(out_one)) < PARITY_ATOL
    # Only the main process of machine 0 wrote the outputs.
    assert "world_model" in read_json(tmp_path / "two" / "run" / K.SUMMARY_FILE)["phases"]
    # The control: one process at the per-rank batch trains another model.
    assert max_weight_diff(weights(out_control), weights(out_one)) > CONTROL_MIN_DIFF


# ---------------------------------------------------------------------------------------------
# The Slurm script: the command each node runs

STUB_SRUN = """#!/bin/bash
# Runs the job step once per node, as srun does, with that node's SLURM_NODEID.
while [[ "$1" == --* ]]; do shift; done
for node in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$node SLURMD_NODENAME=node$node "$@" || exit $?
done
"""
STUB_SCONTROL = """#!/bin/bash
# `scontrol show hostnames <nodelist>`: one host a line.
[[ "$1 $2" == "show hostnames" ]] || exit 2
for host in $(echo "$3" | tr ',' ' '); do echo "$host"; done
"""
STUB_ACCELERATE = """#!/bin/bash
# Records the node's command line instead of starting a training.
printf '%s\\n' "$*" >> "$STUB_LOG"
"""


def stub_bin(folder: Path) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("srun", STUB_SRUN),
        ("scontrol", STUB_SCONTROL),
        ("accelerate", STUB_ACCELERATE),
    ):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("nodes, gpus", [(2, 8), (4, 2)])
def test_slurm_script_composes_one_launch_per_node(tmp_path, nodes, gpus):
    bin_dir = stub_bin(tmp_path)
    log = tmp_path / "commands.txt"
    hosts = [f"gpu-{i:02d}" for i in range(nodes)]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "SLURM_JOB_NODELIST": ",".join(hosts),
        "SLURM_NNODES": str(nodes),
        "GPUS_PER_NODE": str(gpus),
        "CONFIG": "recipes/configs/walk_lewm.yaml",
    }
    proc = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "--max_steps", "2000"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == nodes
    for rank, line in enumerate(lines):
        assert line.split() == [
            "launch",
            "--config_file",
            "recipes/launch/multi_node.yaml",
            "--num_machines",
            str(nodes),
            "--num_processes",
            str(nodes * gpus),
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            hosts[0],
            "--main_process_port",
            "29500",
            "recipes/train.py",
            "--config",
            "recipes/configs/walk_lewm.yaml",
            "--max_steps",
            "2000",
        ], line
    # The control: without the quoting that defers $SLURM_NODEID to each node, every node
    # would get the same machine rank.
    assert len({line.split()[8] for line in lines}) == nodes

#!/bin/bash
# Multi-node training on Slurm: one `accelerate launch` per node, each starting one process per
# GPU, all meeting at node 0. Submit with `sbatch recipes/launch/slurm_multi_node.sh`; override
# the recipe with `CONFIG=recipes/configs/walk_lewm.yaml sbatch ...` and add recipe flags after
# the script name (`sbatch recipes/launch/slurm_multi_node.sh --max_steps 2000`).
#SBATCH --job-name=lewm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it spawns the GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

CONFIG=${CONFIG:-recipes/configs/default.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# The first host of the allocation (read whole: `| head -n 1` under pipefail can fail with
# SIGPIPE when scontrol writes the other hosts after head has exited).
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MAIN_PROCESS_IP=${HOSTS[0]}
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
mkdir -p logs

# Quoted so that each node expands its own $SLURM_NODEID (its machine rank) under srun.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --config_file recipes/launch/multi_node.yaml \
  --num_machines $SLURM_NNODES \
  --num_processes $NUM_PROCESSES \
  --machine_rank \$SLURM_NODEID \
  --main_process_ip $MAIN_PROCESS_IP \
  --main_process_port $MAIN_PROCESS_PORT \
  recipes/train.py --config $CONFIG $*"

#!/bin/bash
# Alpaca fine-tuning on several nodes under SLURM: srun starts one torchrun per node; the torchruns meet at a c10d
# rendezvous on the first node, and train.py then runs exactly as on one node (FSDP over every GPU of every node).
#
# Submit from the repository root, with the paths on a file system every node sees (flags after the script go to
# train.py and override the defaults below):
#
#     sbatch --nodes 2 --gpus-per-node 8 scripts/slurm_train.sh \
#         --model_name_or_path /shared/llama-7b-hf --data_path /shared/alpaca_data.json --output_dir /shared/alpaca
#
# The paper's hyperparameters are the defaults, and the effective batch stays 128 = nodes x GPUs per node x
# PER_DEVICE_BATCH x gradient accumulation steps: the accumulation is computed here, and the script stops with a
# message when 128 is not a multiple of nodes x GPUs x PER_DEVICE_BATCH. Settings (environment variables, whole
# numbers; anything else stops the script with exit status 2 before it computes or launches anything):
#     GPUS_PER_NODE     processes per node (default: the GPUs SLURM gave the job on a node, else 8)
#     PER_DEVICE_BATCH  examples per GPU per micro-batch (default 4, the paper's)
#     EFFECTIVE_BATCH   examples per optimizer step (default 128, the paper's)
#     RDZV_PORT         port of the rendezvous on the first node (default 29500)
#     TORCHRUN          the launcher (default: torchrun on PATH, e.g. from the project's .venv)
# Only global rank 0 writes the final checkpoint, into --output_dir on the first node's view of it; intermediate
# FSDP checkpoints gather to rank 0 as well (configs/fsdp_llama.json: FULL_STATE_DICT).
#
# Preview without SLURM: DRY_RUN=1 bash scripts/slurm_train.sh --model_name_or_path ... prints the command each of
# 2 nodes would run (DRY_RUN_NODES="node001 node002" names them) and exits.
#
#SBATCH --job-name=alpaca
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out

set -euo pipefail

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    read -r -a NODES <<< "${DRY_RUN_NODES:-node001 node002}"
    JOB_ID=dry-run
else
    if [[ -z "${SLURM_JOB_NODELIST:-}" ]]; then
        echo "error: not inside a SLURM job; submit with sbatch (see the top of $0), or preview with DRY_RUN=1." >&2
        exit 1
    fi
    mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    JOB_ID=$SLURM_JOB_ID
    cd "${SLURM_SUBMIT_DIR:-.}"
fi
NNODES=${#NODES[@]}
HEAD_NODE=${NODES[0]}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-4}
EFFECTIVE_BATCH=${EFFECTIVE_BATCH:-128}
RDZV_PORT=${RDZV_PORT:-29500}

# Each setting is checked as a plain whole number in its range before any arithmetic: bash arithmetic evaluates a
# variable's text as an expression, so PER_DEVICE_BATCH='HOME[$(touch x)]' would run the command inside it.
require_whole_number() {  # NAME VALUE MIN MAX
    if [[ ! "$2" =~ ^[0-9]{1,9}$ ]] || (( 10#$2 < $3 || 10#$2 > $4 )); then
        echo "error: $1 must be a whole number from $3 to $4, got '$2'." >&2
        exit 2
    fi
}
require_whole_number GPUS_PER_NODE "$GPUS_PER_NODE" 1 1024
require_whole_number PER_DEVICE_BATCH "$PER_DEVICE_BATCH" 1 65536
require_whole_number EFFECTIVE_BATCH "$EFFECTIVE_BATCH" 1 16777216
require_whole_number RDZV_PORT "$RDZV_PORT" 1 65535
GPUS_PER_NODE=$((10#$GPUS_PER_NODE)) PER_DEVICE_BATCH=$((10#$PER_DEVICE_BATCH))  # 08 is 8, not an octal error
EFFECTIVE_BATCH=$((10#$EFFECTIVE_BATCH)) RDZV_PORT=$((10#$RDZV_PORT))

PER_STEP=$((NNODES * GPUS_PER_NODE * PER_DEVICE_BATCH))
if (( EFFECTIVE_BATCH % PER_STEP != 0 )); then
    echo "error: an effective batch of $EFFECTIVE_BATCH is not a multiple of $NNODES nodes x $GPUS_PER_NODE GPUs x" \
         "$PER_DEVICE_BATCH per device = $PER_STEP; set PER_DEVICE_BATCH (or EFFECTIVE_BATCH) so that it is." >&2
    exit 2
fi
ACCUMULATION=$((EFFECTIVE_BATCH / PER_STEP))

LAUNCH=(
    "${TORCHRUN:-torchrun}" --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE"
    --rdzv_id "$JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$HEAD_NODE:$RDZV_PORT"
    train.py
    --bf16 True --num_train_epochs 3
    --per_device_train_batch_size "$PER_DEVICE_BATCH" --per_device_eval_batch_size "$PER_DEVICE_BATCH"
    --gradient_accumulation_steps "$ACCUMULATION"
    --eval_strategy no --save_strategy steps --save_steps 2000 --save_total_limit 1
    --learning_rate 2e-5 --weight_decay 0. --warmup_steps 0.03 --lr_scheduler_type cosine
    --model_max_length 512 --logging_steps 1
    --fsdp --fsdp_config configs/fsdp_llama.json --tf32 True
    "$@"
)

echo "# $NNODES nodes x $GPUS_PER_NODE GPUs x $PER_DEVICE_BATCH per device x $ACCUMULATION accumulation steps" \
     "= $EFFECTIVE_BATCH examples per optimizer step; rendezvous at $HEAD_NODE:$RDZV_PORT"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    for node in "${NODES[@]}"; do
        printf '[%s] %s\n' "$node" "$(printf '%q ' "${LAUNCH[@]}")"
    done
    exit 0
fi
srun --nodes "$NNODES" --ntasks-per-node 1 "${LAUNCH[@]}"

#!/usr/bin/env bash
# The offline end-to-end demo, on CPU in ~8 minutes (2 cores; ~10.5 with the install): the whole Alpaca pipeline on a tiny model.
#
#   bash scripts/demo.sh                 # sets up .venv first if needed; writes demo_out/
#   DEMO_OUT=/tmp/demo bash scripts/demo.sh
#
# Every step runs the real scripts; nothing is mocked. A 64-wide, 2-layer model trained for a
# minute writes toy-quality text: judge the plumbing, not the prose.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${DEMO_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true

out=${DEMO_OUT:-demo_out}
rm -rf "$out"
mkdir -p "$out"
start=$SECONDS
step() { printf '\n=== [%3ds] %s\n' "$((SECONDS - start))" "$*"; }

step "1/7 Build a tiny LLaMA-style base model (hidden 64, 2 layers, SentencePiece tokenizer without a pad token)"
python scripts/make_tiny_model.py --output_dir "$out/base"

step "2/7 Fine-tune it with train.py on data/demo_alpaca.json (the Alpaca recipe, on CPU)"
python train.py \
  --model_name_or_path "$out/base" \
  --data_path data/demo_alpaca.json \
  --output_dir "$out/tuned" \
  --use_cpu True \
  --num_train_epochs 60 \
  --per_device_train_batch_size 8 \
  --learning_rate 5e-3 \
  --lr_scheduler_type cosine \
  --warmup_steps 0.03 \
  --model_max_length 256 \
  --logging_steps 75 \
  --save_strategy no \
  --report_to none

step "3/7 Answer instructions with inference.py (two seen in training, two new)"
cat > "$out/questions.json" <<'JSON'
[
  {"instruction": "Name the largest ocean on Earth.", "input": ""},
  {"instruction": "Classify the sentiment of the sentence as positive or negative.",
   "input": "The hotel room was spotless and the staff were wonderful."},
  {"instruction": "Give three tips for staying healthy.", "input": ""},
  {"instruction": "Translate the sentence into French.", "input": "The weather is nice today."}
]
JSON
python inference.py --model_name_or_path "$out/tuned" --data_path "$out/questions.json" \
  --output_path "$out/answers.json" --max_new_tokens 40
python - "$out/answers.json" <<'PY'
import json, sys
for record in json.load(open(sys.argv[1])):
    print(f"  Instruction: {record['instruction']}" + (f"\n  Input: {record['input']}" if record["input"] else ""))
    print(f"  Response:    {record['output']!r}\n")
PY

step "4/7 Serve the fine-tuned model with transformers serve (train.py saved the Alpaca prompt as its chat template) and ask it one question through the OpenAI-compatible endpoint"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
transformers serve "$out/tuned" --host 127.0.0.1 --port "$port" --device cpu > "$out/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
python - "$port" "$server" <<'PY'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(300):  # ready in ~7 s on an idle machine
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        break
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("transformers serve stopped; see serve.log")
        time.sleep(0.5)
else:
    sys.exit("transformers serve did not come up; see serve.log")
PY
python inference.py --api_base "http://127.0.0.1:$port/v1" --model_name "$out/tuned" --api_type chat \
  --instruction "Name the largest ocean on Earth." --max_new_tokens 40 > "$out/served_answer.txt"
python - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
served, local = (out / "served_answer.txt").read_text().strip(), json.load(open(out / "answers.json"))[0]["output"]
print(f"  Served answer: {served!r}")
if served != local:
    sys.exit(f"  ... but inference.py answered {local!r}: the served prompt differs from training's")
print("  (the same as inference.py's answer in step 3: the chat template gave the served model training's prompt)")
PY
kill "$server"
wait "$server" 2>/dev/null || true
trap - EXIT

step "5/7 Publish a weight diff and recover the fine-tuned weights from it"
python weight_diff.py make_diff --path_raw "$out/base" --path_tuned "$out/tuned" --path_diff "$out/diff"
python weight_diff.py recover --path_raw "$out/base" --path_diff "$out/diff" --path_tuned "$out/recovered" \
  --test_inference False
python scripts/compare_checkpoints.py "$out/tuned" "$out/recovered"

step "6/7 Generate Self-Instruct data with the fine-tuned model as the LLM (local backend, 2 requests)"
python -m generate_instruction generate_instruction_following_data \
  --api_type local \
  --model_name "$out/tuned" \
  --output_dir "$out/generated" \
  --num_instructions_to_generate 10 \
  --request_batch_size 2 \
  --max_requests 2 \
  --max_tokens 128 \
  --seed 0

step "7/7 Evaluate: the fine-tuned model against the base model, judged by the fine-tuned model (judge.py, local)"
# Answers to the first 20 instructions of the evaluation set from each model, then the pairwise judge in swap mode.
head -n 20 eval_instructions.jsonl > "$out/eval20.jsonl"
mkdir -p "$out/eval"
for model in base tuned; do
  python inference.py --model_name_or_path "$out/$model" --data_path "$out/eval20.jsonl" \
    --output_path "$out/eval/$model.json" --max_new_tokens 16
done
python judge.py --model_outputs "$out/eval/tuned.json" --reference_outputs "$out/eval/base.json" \
  --output_dir "$out/judged" --judge_model "$out/tuned" --api_type local --max_tokens 16 --max_retries 1
cat <<'TXT'
These verdicts are toys: a 64-wide model trained on 120 examples cannot read two answers and
write "[[A]]" or "[[B]]", so most pairs come back unjudged, and the numbers above rest on the few
that happened to contain a verdict (or on identical answers, which are ties without a call). The point
is the plumbing: answers, the judge in both orders, the journal, results.json, annotations.jsonl and
win_rates.png, all in the directory above. With a real judge, see docs/evaluation.md.
TXT

step "Done in $((SECONDS - start)) s; everything is in $out/"
cat <<'TXT'
A model this small cannot write real instructions or answers, so expect few or no generated tasks
to survive the parser above: the point is that every step ran. With a real model the same commands
are, for example (see README.md, "Your own model, end to end"):

  export OPENAI_API_KEY=sk-...   # the generator, the reference answers and the judge call OpenAI here
  python -m generate_instruction generate_instruction_following_data \
      --output_dir ./ --num_instructions_to_generate 52000 --model_name gpt-3.5-turbo-instruct
  torchrun --nproc_per_node=4 --master_port=29500 train.py \
      --model_name_or_path huggyllama/llama-7b --data_path ./alpaca_data.json --bf16 True \
      --output_dir output/alpaca --num_train_epochs 3 --per_device_train_batch_size 4 \
      --gradient_accumulation_steps 8 --learning_rate 2e-5 --fsdp --fsdp_config configs/fsdp_llama.json
  python inference.py --model_name_or_path output/alpaca --instruction "Give three tips for staying healthy."
  python judge.py --model_outputs outputs/alpaca.json --reference_outputs outputs/reference.json \
      --output_dir judged --judge_model gpt-4o-mini
TXT

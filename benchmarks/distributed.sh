#!/usr/bin/env bash
# Data-parallel ZO throughput on 1 and 2 GPUs, and a device_map run; writes logs and summary.json to $OUT.
# Usage (on a machine with 2 GPUs, from the repository root): OUT=out DATA=../shared/data bash benchmarks/distributed.sh
set -euo pipefail
OUT=${OUT:-bench-out}; DATA=${DATA:-../shared/data}; SHAPE=${SHAPE:-llama-7b}; STEPS=${STEPS:-30}
mkdir -p "$OUT"
common="~model.name_or_path model.config=$SHAPE model.dtype=bf16 data.task=squad data.path=$DATA/squad data.max_length=256 data.num_dev=0 data.num_eval=1
  train.batch_size=32 train.max_steps=$STEPS eval.every=0 eval.at_start=false eval.test=false
  checkpoint.every=0 checkpoint.save_final=false logging.progress=plain logging.every=10 run.output_dir=/tmp/zoft-bench"
python3 -m zoft train recipes/quickstart.yaml $common run.name=gpu1 2>&1 | tail -3 | tee "$OUT/gpu1.log"
torchrun --nproc-per-node 2 -m zoft train recipes/quickstart.yaml $common run.name=gpu2 2>&1 | tail -3 | tee "$OUT/gpu2.log"
# device_map: a model with real weights on disk, over two GPUs whose budgets are set by max_memory
python3 - <<'PY'
import torch
from transformers import AutoModelForCausalLM
from zoft.models.shapes import model_config
from zoft.models.tiny import tiny_tokenizer
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(model_config("opt-1.3b"), dtype=torch.bfloat16)
model.save_pretrained("/tmp/opt13-random"); tiny_tokenizer().save_pretrained("/tmp/opt13-random")
PY
python3 -m zoft train recipes/quickstart.yaml model.name_or_path=/tmp/opt13-random model.dtype=bf16 model.device_map=auto \
  "model.max_memory=[1GiB, 8GiB]" data.task=squad data.path=$DATA/squad data.num_dev=0 data.num_eval=1 train.batch_size=16 train.max_steps=20 \
  eval.every=0 eval.at_start=false eval.test=false checkpoint.every=0 checkpoint.save_final=false logging.progress=plain \
  logging.every=10 run.output_dir=/tmp/zoft-bench run.name=devmap 2>&1 | tail -3 | tee "$OUT/devmap.log"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def rate(name, skip=5):
    rows = [json.loads(l) for l in open(f"/tmp/zoft-bench/{name}/metrics.jsonl") if '"split"' not in l]
    a, b = rows[skip - 1], rows[-1]
    return {"steps_per_s": (b["step"] - a["step"]) / (b["time_s"] - a["time_s"]), "steps_timed": b["step"] - a["step"],
            "peak_gib_rank0": max(r["mem_gib"] for r in rows), "final_loss": b["loss"]}
summary = {n: rate(n) for n in ("gpu1", "gpu2", "devmap")}
summary["scaling_efficiency"] = summary["gpu2"]["steps_per_s"] / (2 * summary["gpu1"]["steps_per_s"])
import torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained("/tmp/opt13-random", device_map="auto", max_memory={0: "1GiB", 1: "8GiB"})
summary["devmap_placement"] = sorted({str(v) for v in m.hf_device_map.values()})
summary["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
summary["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY

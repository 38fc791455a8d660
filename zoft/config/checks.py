"""Checks that span keys or touch the file system, run after the types are right."""

from __future__ import annotations

from pathlib import Path

from zoft.config.schema import Recipe


def check_recipe(r: Recipe) -> list[str]:
    from zoft.data.tasks import TASKS
    from zoft.models.shapes import shape_problem
    from zoft.models.source import source_problem
    from zoft.models.tiny import TINY_PREFIX, tiny_spec_problem

    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(0 <= r.run.seed < 2**32, "run.seed: must be between 0 and 2**32 - 1 (the data sampler's generator takes no other)")
    need(r.data.seed is None or 0 <= r.data.seed < 2**32, "data.seed: must be between 0 and 2**32 - 1 (the sampler's generator takes no other)")
    need(
        r.run.name not in ("", ".", "..") and not any(sep in r.run.name for sep in ("/", "\\")),
        f"run.name: {r.run.name!r} must be a plain folder name (the run writes only inside run.output_dir/run.name)",
    )
    name = r.model.name_or_path or ""
    if (r.model.name_or_path is None) == (r.model.config is None):
        problems.append("model.name_or_path: give either model.name_or_path (weights) or model.config (a shape, random weights)")
    if r.model.device_map is not None:
        need(r.model.config is None and not name.startswith(TINY_PREFIX),
             "model.device_map: needs weights to place (model.name_or_path of a real model)")
    need(r.model.max_memory is None or r.model.device_map is not None, "model.max_memory: only with model.device_map: auto")
    need(r.model.quantization == "none" or r.model.gguf_file is None,
         "model.quantization: a GGUF model is dequantized on load; quantize a safetensors checkpoint instead")
    if r.model.config is not None:
        problem = shape_problem(r.model.config)
        need(problem is None, problem or "")
        need(r.model.gguf_file is None, "model.gguf_file: a model.config shape has no weights to read")
    if name.startswith(TINY_PREFIX):
        problem = tiny_spec_problem(name)
        need(problem is None, f"model.name_or_path: {problem}")
        need(r.model.gguf_file is None, "model.gguf_file: tiny models are built in memory, not read from GGUF")
    elif name:
        problem = source_problem(name, r.model.gguf_file)
        need(problem is None, problem or "")
    if r.data.task is not None and r.data.task not in TASKS:
        problems.append(TASKS.unknown(r.data.task, "data.task"))
    elif r.data.task is not None and TASKS.get(r.data.task, "data.task").kind != "encoder":
        need(not name.startswith("tiny:bert"), f"model.name_or_path: {name} is an encoder; task {r.data.task} needs a causal LM")
    elif r.data.task is not None:
        need(r.eval.icl_shots == 0, "eval.icl_shots: encoder tasks (a classification head) take no demonstrations")
        need(r.data.template is None, "data.template: encoder tasks have no prompt template")
        need(r.model.encoder_head != "labels" or bool(TASKS.get(r.data.task, "data.task").label_texts),
             f"model.encoder_head: task {r.data.task} has no label descriptions to embed (use linear or auto)")
    need(r.eval.icl_shots >= 0, "eval.icl_shots: must be >= 0")
    if r.data.path is not None:
        path = r.data.path.replace("{task}", r.data.task or "")
        need(Path(path).expanduser().exists(), f"data.path: no such file or folder {path!r}")
    need(r.data.num_train >= 1, "data.num_train: must be >= 1")
    need(r.data.num_dev is None or r.data.num_dev >= 0, "data.num_dev: must be >= 0")
    need(r.data.num_eval >= 1, "data.num_eval: must be >= 1")
    need(r.data.max_length >= 8, "data.max_length: must be >= 8")
    problems += r.method.check(r)
    if r.params.mode == "lora":
        need(r.params.lora_r >= 1, "params.lora_r: must be >= 1")
        need(bool(r.params.lora_targets), "params.lora_targets: name at least one module")
    if r.params.mode == "prefix":
        need(r.params.prefix_tokens >= 1, "params.prefix_tokens: must be >= 1")
        need(r.data.task not in TASKS or TASKS.get(r.data.task, "data.task").kind != "encoder",
             f"params.mode: prefix needs a causal LM; task {r.data.task} trains a classification head (use full, lora or tt_adapter)")
    if r.params.mode == "tt_adapter":
        need(r.params.adapter_dim >= 1, "params.adapter_dim: must be >= 1")
        need(r.params.tt_rank >= 1, "params.tt_rank: must be >= 1")
    need(r.optim.lr >= 0, "optim.lr: must be >= 0")
    need(r.optim.weight_decay >= 0, "optim.weight_decay: must be >= 0")
    need(r.optim.adam_eps > 0, "optim.adam_eps: must be > 0")
    n_betas = {"sgd": 0, "momentum": 1, "adam": 2}[r.optim.name]
    if r.optim.betas is not None:
        need(
            len(r.optim.betas) == n_betas and n_betas > 0,
            f"optim.betas: {r.optim.name} takes {n_betas or 'no'} beta(s), got {r.optim.betas}",
        )
        need(all(0 <= b < 1 for b in r.optim.betas), "optim.betas: each beta must be in [0, 1)")
    need(r.train.max_steps >= 1, "train.max_steps: must be >= 1")
    need(r.train.batch_size >= 1, "train.batch_size: must be >= 1")
    need(r.train.batch_size <= r.data.num_train, f"train.batch_size: {r.train.batch_size} is more than data.num_train ({r.data.num_train})")
    need(r.train.max_bad_steps >= 1, "train.max_bad_steps: must be >= 1")
    need(r.train.divergence_factor is None or r.train.divergence_factor > 1, "train.divergence_factor: must be > 1 (or null)")
    need(r.train.max_rollbacks >= 0, "train.max_rollbacks: must be >= 0")
    need(0 < r.train.rollback_lr_factor <= 1, "train.rollback_lr_factor: must be in (0, 1]")
    need(0 <= r.optim.warmup_steps <= r.train.max_steps, "optim.warmup_steps: must be between 0 and train.max_steps")
    need(r.eval.every >= 0, "eval.every: must be >= 0")
    need(r.eval.batch_size >= 1, "eval.batch_size: must be >= 1")
    need(r.checkpoint.every >= 0, "checkpoint.every: must be >= 0")
    need(r.checkpoint.keep_last >= 1, "checkpoint.keep_last: must be >= 1")
    need(r.logging.every >= 1, "logging.every: must be >= 1")
    if r.checkpoint.resume not in (None, "auto"):
        need(Path(r.checkpoint.resume).expanduser().is_dir(), f"checkpoint.resume: no such run folder {r.checkpoint.resume!r}")
    if r.checkpoint.replay:
        need(r.checkpoint.resume == "auto", "checkpoint.replay: replays this run's own metrics.jsonl; set checkpoint.resume=auto")
        need(r.method.name != "fo", "checkpoint.replay: a first-order step is not a function of logged numbers; fo runs resume from checkpoints only")
    return problems

"""Typed recipe sections. Every field carries its help text; the loader enforces the types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from zoft.config.methods import MethodConfig, MezoConfig

REQUIRED: Any = None  # a field whose metadata says required=True must be given by the recipe


def knob(default: Any, help: str, required: bool = False) -> Any:
    """A dataclass field with its help text (listed in docs/recipes.md)."""
    return field(default=default, metadata={"help": help, "required": required})


@dataclass
class RunConfig:
    name: str = knob("zoft-run", "run directory name under run.output_dir")
    output_dir: str = knob("runs", "folder holding run directories")
    seed: int = knob(0, "master seed: data sampling, ZO directions, tiny-model init")
    overwrite: bool = knob(False, "allow starting fresh in a run directory that already holds a run")


@dataclass
class ModelConfig:
    name_or_path: str | None = knob(None, "HF hub id, local folder, pkg:<package>[/folder], or tiny:<arch>[-<hidden>x<layers>]")
    config: str | None = knob(None, "instead of weights: a config.json file or a built-in shape (opt-1.3b, llama-7b, ...), random weights")
    dtype: Literal["fp32", "bf16", "fp16"] = knob("fp32", "weight dtype")
    tf32: bool = knob(False, "on a GPU, fp32 matrix products in TensorFloat-32 (10-bit mantissa products, fp32 sums; several times the fp32 rate); weights and updates stay fp32")
    gguf_file: str | None = knob(None, "GGUF file (path, or name inside name_or_path); dequantized on load")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "auto = cuda when available, else cpu")
    trust_remote_code: bool = knob(False, "run model code from the hub; off unless asked for")
    device_map: Literal["auto"] | None = knob(None, "auto: one process spreads the model's layers over the visible GPUs (accelerate)")
    max_memory: list[str] | None = knob(None, "with device_map: memory budget per GPU in order, e.g. [20GiB, 20GiB]")
    encoder_head: Literal["auto", "labels", "linear"] = knob(
        "auto",
        "encoder tasks: labels = cosine similarity to the encoder's own embeddings of the task's label descriptions "
        "(trained; a head that starts out doing the task, as MeZO's prompts do); linear = transformers' new random "
        "head; auto = labels when the task describes its labels",
    )
    quantization: Literal["none", "int8", "nf4"] = knob(
        "none",
        "store the base's linear layers in int8 or 4-bit NormalFloat (bitsandbytes), frozen; train adapters "
        "(params.mode) or, with lozo/subzo/tezo on the functional path, low-rank deltas over every matrix",
    )


@dataclass
class ParamsConfig:
    mode: Literal["full", "lora", "prefix", "tt_adapter"] = knob(
        "full",
        "which parameters are trained: full = every weight; lora = LoRA adapters (peft); prefix = key/value "
        "prefixes (peft, MeZO); tt_adapter = tensor-train bottleneck adapters (AdaZeta)",
    )
    lora_r: int = knob(8, "LoRA rank (MeZO: 8)")
    lora_alpha: float = knob(16.0, "LoRA scaling numerator: the update is (alpha / r)·B·A (MeZO: 16)")
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "module names that get adapters (MeZO: q_proj, v_proj)", "required": False})
    prefix_tokens: int = knob(5, "prefix: key/value rows per layer, initialised from the activations of that many random tokens (MeZO: 5)")
    adapter_dim: int = knob(64, "tt_adapter: bottleneck width of each adapter (AdaZeta: 64)")
    tt_rank: int = knob(5, "tt_adapter: tensor-train rank of the adapters' cores (AdaZeta: 5)")


@dataclass
class DataConfig:
    task: str = knob(REQUIRED, "task name (see docs/tasks.md)", required=True)
    path: str | None = knob(None, "local folder with <split>.jsonl|csv|parquet files in the hub's field layout; `{task}` is replaced by the task name")
    hub_name: str | None = knob(None, "HF hub dataset id; default: the task's own")
    hub_config: str | None = knob(None, "HF hub dataset config name")
    num_train: int = knob(1000, "training examples sampled from the train split (MeZO protocol)")
    num_dev: int | None = knob(None, "dev examples, sampled from the train split after the training ones; null = 500, or 100 for the small CB and COPA (MeZO)")
    num_eval: int = knob(1000, "test examples sampled from the validation split")
    seed: int | None = knob(None, "sampling seed; null = run.seed")
    max_length: int = knob(256, "prompt tokens kept (truncated from the left)")
    template: str | None = knob(None, "custom prompt with {field} placeholders; null = the task's MeZO template")


@dataclass
class OptimConfig:
    name: Literal["sgd", "momentum", "adam"] = knob("sgd", "what is done with the estimate g·Z")
    lr: float = knob(1e-6, "peak learning rate")
    weight_decay: float = knob(0.0, "decoupled weight decay, never on 1-D parameters")
    betas: list[float] | None = knob(None, "momentum: [beta1]; adam: [beta1, beta2]; null = defaults")
    adam_eps: float = knob(1e-8, "adam denominator epsilon")
    schedule: Literal["constant", "linear", "cosine"] = knob("constant", "learning-rate schedule after warmup")
    warmup_steps: int = knob(0, "linear warmup steps")

    def beta_values(self) -> list[float]:
        return self.betas or {"momentum": [0.9], "adam": [0.9, 0.999]}.get(self.name, [])


@dataclass
class TrainConfig:
    max_steps: int = knob(1000, "optimizer steps")
    batch_size: int = knob(16, "examples per step")
    spread_queries: bool = knob(False, "with torchrun: ranks split the step's queries (each on the whole batch) instead of the batch")
    cuda_graphs: Literal["auto"] | bool = knob(
        "auto",
        "ZO steps on a GPU: replay each batch shape's loss from a CUDA graph (no per-kernel launch cost; "
        "small models are launch-bound); auto = where the method's forward allows it, eager if recording fails; "
        "true = stop if recording fails",
    )
    max_bad_steps: int = knob(5, "stop after this many steps in a row with a non-finite loss or gradient (each is skipped)")
    divergence_factor: float | None = knob(None, "roll back to the last checkpoint when the loss exceeds this many times its running mean; null = off")
    max_rollbacks: int = knob(3, "stop after this many rollbacks")
    rollback_lr_factor: float = knob(0.5, "multiply the learning rate by this at each rollback")


@dataclass
class EvalConfig:
    every: int = knob(0, "dev evaluation every N steps; 0 = only at the end")
    at_start: bool = knob(True, "evaluate dev and test before the first step (the zero-shot scores)")
    batch_size: int = knob(32, "examples per eval forward")
    test: bool = knob(True, "score the test set at the end, with the best dev checkpoint")
    test_each: bool = knob(False, "also score the test set at every dev evaluation: a test curve, from which the test score at the best dev step of any shorter budget can be read")
    icl_shots: int = knob(0, "in-context demonstrations from the training set before each dev/test prompt (0 = zero-shot)")


@dataclass
class CheckpointConfig:
    every: int = knob(500, "write a checkpoint every N steps (0 = only at the end and on Ctrl-C)")
    keep_last: int = knob(2, "checkpoints kept besides the best one")
    resume: str | None = knob(None, "null = fresh run; auto = continue this run's newest complete checkpoint (or start); a run folder = continue that run")
    save_final: bool = knob(True, "save the trained model at the end for from_pretrained")
    replay: bool = knob(False, "with resume=auto and no complete checkpoint: rebuild the weights and method state by re-applying the updates metrics.jsonl logged (seed, projected gradients, learning rates); a ZO run goes on elsewhere from its metrics alone")


@dataclass
class LoggingConfig:
    every: int = knob(10, "log a metrics line every N steps")
    progress: Literal["auto", "rich", "plain", "none"] = knob("auto", "auto = rich on a terminal, plain lines otherwise")


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the model", "required": True})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the task and its data", "required": True})
    run: RunConfig = field(default_factory=RunConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    method: MethodConfig = field(default_factory=MezoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


SECTIONS = ("run", "model", "params", "data", "method", "optim", "train", "eval", "checkpoint", "logging")

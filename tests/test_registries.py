"""Every registry (backends, judge methods, training methods, reward sources, row checks, commands) is one ``core.registry.Registry``:
each name resolves to what its kind is, an unknown name is a UserError with "did you mean", a name is taken once."""

from __future__ import annotations

import pytest

from cai.cli import COMMANDS, Command
from core.backends.base import Backend
from core.backends.registry import BACKENDS
from core.errors import UserError
from core.registry import Registry
from core.schema import CachedJudgement
from generation.checks import ROW_CHECKS, Check
from judging.methods import JUDGE_METHODS, JudgeMethod
from training.methods import TRAINING_METHODS, TrainingMethod
from training.rl import REWARD_SOURCES


def _is_training_method(method) -> bool:
    from training.stages import TrainingStage

    if isinstance(method, TrainingMethod) and not method.installed:
        return True  # it needs an optional extra (ppo); tests/training/test_rl.py checks what it says without
    if not method.installed:  # its library is another version (PPO's TRL): checked where that one is installed
        return isinstance(method, TrainingMethod)
    stage = method.stage_class
    return isinstance(method, TrainingMethod) and issubclass(stage, TrainingStage) \
        and isinstance(stage.gpu_train_batch, int) and hasattr(method.config_class, "__dataclass_fields__")


#: each registry and what every entry of it must be
REGISTRIES = {
    "backend": (BACKENDS, lambda entry: isinstance(entry, type) and issubclass(entry, Backend)),
    "judge method": (JUDGE_METHODS, lambda entry: isinstance(entry, type) and issubclass(entry, JudgeMethod)
                     and issubclass(entry.record_model, CachedJudgement)),
    "training method": (TRAINING_METHODS, _is_training_method),
    "reward source": (REWARD_SOURCES, callable),
    "row check": (ROW_CHECKS, lambda entry: isinstance(entry, type) and issubclass(entry, Check)),
    "command": (COMMANDS, lambda entry: isinstance(entry, Command) and callable(__import__("pkgutil").resolve_name(entry.target))),
}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_entry_resolves_to_its_kind(kind):
    registry, is_kind = REGISTRIES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and registry.names()
    for name in registry.names():
        assert is_kind(registry.get(name)), f"{kind} {name!r} is {registry.get(name)!r}"


@pytest.mark.parametrize("kind", REGISTRIES)
def test_an_unknown_name_is_a_user_error_with_the_closest_name(kind):
    registry, _ = REGISTRIES[kind]
    name = registry.names()[-1]
    with pytest.raises(UserError) as info:
        registry.get(name + "x", flag="--option")
    message = str(info.value)
    assert message.startswith(f"--option {name + 'x'!r} is unknown; did you mean {name!r}?")
    assert message.endswith(f"Choose one of: {', '.join(registry.names())}.")


@pytest.mark.parametrize("kind", REGISTRIES)
def test_a_name_is_registered_once(kind, register):
    registry, _ = REGISTRIES[kind]
    name = registry.names()[0]
    with pytest.raises(ValueError, match=f"{kind} {name!r} is already registered"):
        registry.register(name, "anything:Else")
    register(registry, "later", "json:dumps")  # registered last, listed last, imported only when asked for
    assert registry.names()[-1] == "later" and "later" in registry
    import json

    assert registry.get("later") is json.dumps


def test_an_entry_is_imported_only_when_asked_for(tmp_path, monkeypatch):
    (tmp_path / "heavy_extension.py").write_text("import sys\nsys.modules[__name__].loaded = True\nThing = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("thing", {"heavy": "heavy_extension:Thing"})
    import sys

    assert registry.names() == ["heavy"] and "heavy_extension" not in sys.modules
    thing = registry.get("heavy")
    assert sys.modules["heavy_extension"].Thing is thing and registry.get("heavy") is thing


@pytest.mark.parametrize("name", JUDGE_METHODS.names())
def test_a_judge_methods_options_are_flags_settings_and_inherited_by_cai_runs_eval(name, tmp_path):
    """Each option a method declares is a `cai judge` flag, a judge setting (so it is in the cache key's settings
    and the manifest), and `cai run`'s eval takes the judge section's value of it."""
    import dataclasses

    from cai.pipeline import plan_run
    from judging.config import JudgeModelConfig
    from judging.judge import JudgeSettings
    from judging.methods import method_options

    options = [option.name for option in dataclasses.fields(JUDGE_METHODS.get(name).Options)]
    flags = {field.name for field in dataclasses.fields(JudgeModelConfig)}
    settings = {field.name for field in dataclasses.fields(JudgeSettings)}
    assert set(options) <= flags & settings
    if not options:
        return
    changed = {}
    for option in dataclasses.fields(JUDGE_METHODS.get(name).Options):
        value = option.default
        changed[option.name] = (not value) if isinstance(value, bool) else value + 1
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run_dir: {tmp_path / 'run'}\ngenerate:\n  prompts: prompts/demo.jsonl\njudge:\n  method: {name}\n"
                      + "".join(f"  {key}: {str(value).lower()}\n" for key, value in changed.items())
                      + "train:\n  method: dpo\neval:\n  prompts: prompts/heldout.jsonl\n")
    plan = plan_run(recipe)
    assert dataclasses.asdict(method_options(name, plan.eval)) == changed

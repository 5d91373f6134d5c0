"""The shape of the zoo: parts a module holds, not a tower of mixins.

Every algorithm reads through at most 4 of lit-align's classes (5 for RLVR, PPO and SPIN), the reference mixin is the
only mixin, no method is defined twice along a chain unless it is a declared extension hook (with its default where
it is declared), every option is documented once along the chain, and options appear only where they apply."""

from __future__ import annotations

import inspect

import docstring_parser
import pytest

import lit_align
from lit_align.hparams import accepted_options
from lit_align.reference import mixin as reference
from lit_align.training import base, offline, online

ALGORITHMS = [getattr(lit_align, name) for name in lit_align.__all__ if inspect.isclass(getattr(lit_align, name))]
HOOKS = {*base.EXTENSION_HOOKS, *offline.EXTENSION_HOOKS, *online.EXTENSION_HOOKS, *reference.EXTENSION_HOOKS}
ONLINE = {"GRPO", "RLOO", "ReMax", "RLVR", "PPO", "ReinforcePP", "Distill"}
# An option a subclass declares anew with its own meaning, the base's of that name fixed (passed by the subclass):
# Distill's beta is TRL's generalized-JSD β; the base's KL-to-reference β is 0 there (no reference).
SHADOWED = {("Distill", "beta")}


def chain(cls: type) -> list[type]:
    return [k for k in cls.__mro__ if (k.__module__ or "").startswith(("lit_align", "datamodules"))]


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_at_most_four_classes_and_one_mixin(cls):
    classes = chain(cls)
    assert len(classes) <= (5 if cls.__name__ in ("RLVR", "PPO", "SPIN") else 4), classes
    mixins = [k.__name__ for k in classes if k.__name__.endswith("Mixin")]
    assert mixins in ([], ["ReferenceMixin"])


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_no_method_defined_twice_but_the_extension_hooks(cls):
    seen: dict[str, list[str]] = {}
    for klass in chain(cls):
        for name, value in vars(klass).items():
            if not name.startswith("__") and (inspect.isfunction(value) or isinstance(value, classmethod | property)):
                seen.setdefault(name, []).append(klass.__name__)
    twice = {name: owners for name, owners in seen.items() if len(owners) > 1}
    assert set(twice) <= HOOKS, {name: owners for name, owners in twice.items() if name not in HOOKS}


def test_every_extension_hook_has_its_default_where_it_is_declared():
    declared = {base.AlignmentModule: base.EXTENSION_HOOKS, offline.OfflineModule: offline.EXTENSION_HOOKS,
                online.OnlinePolicyGradient: online.EXTENSION_HOOKS,
                reference.ReferenceMixin: reference.EXTENSION_HOOKS}  # fmt: skip
    for cls, hooks in declared.items():
        for hook in hooks:
            owner = next(k for k in cls.__mro__ if hook in vars(k))
            assert owner is cls or hook in ("on_save_checkpoint", "on_load_checkpoint"), (cls, hook, owner)


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_every_option_is_documented_once_along_the_chain(cls):
    documented: dict[str, list[str]] = {}
    for klass in chain(cls):
        for param in docstring_parser.parse(klass.__doc__ or "", docstring_parser.DocstringStyle.GOOGLE).params:
            documented.setdefault(param.arg_name, []).append(klass.__name__)
    options = accepted_options(cls)
    for owner, option in SHADOWED:
        if owner == cls.__name__:
            assert documented[option][0] == owner  # the subclass's own meaning is the one --help shows
            documented[option] = [owner]
    assert {o: documented.get(o) for o in options if len(documented.get(o, [])) != 1} == {}


def test_options_appear_only_where_they_apply():
    options = {cls.__name__: accepted_options(cls) for cls in ALGORITHMS}
    for name, offered in options.items():
        assert ("sampling" in offered) == (name in ONLINE or name == "SPIN"), name
        assert ("rewards" in offered) == (name in ONLINE), name
        assert ("precompute_reference" in offered) == (name in ("DPO", "IPO", "KTO")), name
        assert ("reference_policy" in offered) == (name in ("DPO", "IPO", "KTO", *ONLINE - {"Distill"})), name
    assert {name for name, offered in options.items() if "kl_penalty" in offered} == {"GRPO", "RLVR", "ReinforcePP"}
    family = {"GRPO", "RLVR", "RLOO", "ReMax", "ReinforcePP"}  # the GRPO loss family's options
    # Distill's opd trains the sampled reverse KL with the family's surrogates and importance ratios
    assert {name for name, offered in options.items() if "importance_ratio" in offered} == family | {"Distill"}
    assert {name for name, offered in options.items() if "objective" in offered} == family | {"Distill"}

"""One contract between the modules, the CLI and the engine: every job's options are defined once
(unleash/jobspec.py), the CLI's parser and the modules' command lines are derived from that list, and
what is built parses back to the same values."""
from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from unleash.cli import build_parser
from unleash.jobs import job_command, register_command, sample_command, train_command
from unleash.jobspec import JOBS, TRAIN_KINDS, TRAINING_DEFAULTS, EngineDefault, Option


def subcommand(name: str) -> argparse.ArgumentParser:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def example_value(option: Option):
    """A value for `option` that differs from its default, of its kind."""
    if option.choices:
        return next(c for c in reversed(option.choices) if c != option.default)
    return {"int": 7, "float": 0.25, "flag": True, "list": [f"{option.dest}-a", f"{option.dest}-b:2"]}.get(
        option.kind, f"{option.dest}-value")


@pytest.mark.parametrize("job", list(JOBS))
def test_every_option_of_a_job_is_in_its_parser_and_nothing_else(job):
    parser = subcommand(job)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == {o.dest for o in JOBS[job].options}
    for option in JOBS[job].options:
        action = actions[option.dest]
        if option.positional:
            assert action.option_strings == []
        else:
            assert action.option_strings == [f for f in (option.short, option.flag) if f]
            assert action.required == option.required
        assert tuple(action.choices or ()) == option.choices
        if not isinstance(option.default, EngineDefault):
            assert action.default == option.default, option.flag


@pytest.mark.parametrize("job", list(JOBS))
def test_a_command_line_built_from_the_options_parses_back_to_the_same_values(job):
    values = {o.dest: example_value(o) for o in JOBS[job].options if o.dest != "progress"}
    command = job_command(job, python="PythonSlicer", **values)
    assert command[:4] == ["PythonSlicer", "-m", "unleash", job]
    args = build_parser().parse_args(command[3:])
    assert {dest: getattr(args, dest) for dest in values} == values
    assert args.progress == "json"


@pytest.mark.parametrize("job", list(JOBS))
def test_options_left_out_of_a_command_line_get_the_parsers_defaults(job):
    required = {o.dest: example_value(o) for o in JOBS[job].options if o.positional or o.required}
    args = build_parser().parse_args(job_command(job, **required)[3:])
    for option in JOBS[job].options:
        if option.dest not in required and option.dest != "progress":
            assert getattr(args, option.dest) == option.parser_default(), option.flag


def test_the_modules_command_builders_say_what_they_build():
    register = register_command("f.nrrd", "m.nrrd", "out", model="r.safetensors", adapt_iters=0, start="network",
                                python="py")
    args = build_parser().parse_args(register[3:])
    assert (args.fixed, args.moving, args.output, args.model, args.adapt_iters, args.start, args.overwrite) == \
        ("f.nrrd", "m.nrrd", "out", "r.safetensors", 0, "network", True)
    sample = build_parser().parse_args(sample_command("samples", 3, schedule="paper", overwrite=False)[3:])
    assert (sample.count, sample.output, sample.schedule, sample.overwrite) == (3, "samples", "paper", False)
    train = build_parser().parse_args(train_command("vqae", data=[("a", 1.0), ("b", 0.5)], out="run",
                                                    validation=["v"], learning_rate=1e-4)[3:])
    assert (train.kind, train.data, train.validation, train.out, train.learning_rate) == \
        ("vqae", ["a", "b:0.5"], ["v"], "run", 1e-4)
    resume = build_parser().parse_args(train_command("vqae", resume="run", out="ignored", iterations=9)[3:])
    assert (resume.resume, resume.out, resume.data, resume.iterations) == ("run", None, None, 9)


def test_a_command_line_refuses_what_the_engine_does_not_offer():
    with pytest.raises(ValueError, match="schedule must be one of paper, maskgit"):
        sample_command("samples", 2, schedule="fastest")
    with pytest.raises(ValueError, match="kind must be one of registration, vqae, denoiser"):
        train_command("sampler", data=[("pairs", 1.0)], out="run")
    with pytest.raises(TypeError, match="register has no option adapt_iterations"):
        register_command("f", "m", "out", adapt_iterations=3)


def test_the_engine_options_dataclasses_use_the_option_names():
    """cli.py fills RegisterOptions, SampleOptions and TrainOptions by name from the parsed options."""
    from unleash.pipeline import RegisterOptions
    from unleash.sample import SampleOptions
    from unleash.train.runconfig import TrainOptions

    for options_class, job in ((RegisterOptions, "register"), (SampleOptions, "sample"), (TrainOptions, "train")):
        assert {f.name for f in fields(options_class)} <= {o.dest for o in JOBS[job].options}


def test_the_trained_kinds_and_their_defaults_are_the_trainers():
    from unleash.train.run import TRAINERS
    from unleash.train.runconfig import default_config
    from unleash.train.settings import TASKS

    assert tuple(TRAINERS) == tuple(TASKS) == TRAIN_KINDS == tuple(TRAINING_DEFAULTS)
    for kind in TRAIN_KINDS:
        training = default_config(kind)["training"]
        assert {key: training[key] for key in TRAINING_DEFAULTS[kind]} == TRAINING_DEFAULTS[kind]

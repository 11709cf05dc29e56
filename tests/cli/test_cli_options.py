"""Options of ``geta compress``: epoch splits, converters, config files, precedence."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from geta.cli.compress import add_parser, options_from_args
from geta.cli.errors import CliError
from geta.cli.options import OPTIMIZERS, STAGE_WEIGHTS, CompressOptions, split_epochs


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["compress", "--out", "x", *argv])


@pytest.mark.parametrize("total", [1, 2, 3, 7, 14, 30])
def test_split_epochs_sums_to_total_and_keeps_a_joint_epoch(total: int) -> None:
    stages = split_epochs(total, (None, None, None, None))
    assert sum(stages) == total and stages[2] >= 1 and min(stages) >= 0


def test_split_epochs_keeps_given_stages() -> None:
    assert split_epochs(None, (None,) * 4) == STAGE_WEIGHTS
    assert split_epochs(None, (0, None, 2, None))[0::2] == (0, 2)
    assert split_epochs(9, (1, 1, 1, None)) == (1, 1, 1, 6)
    with pytest.raises(CliError, match="--epochs 2 is less than"):
        split_epochs(2, (1, 1, 1, None))


@pytest.mark.parametrize("total", range(4, 31))
def test_split_epochs_runs_every_stage_when_there_are_enough_epochs(total: int) -> None:
    stages = split_epochs(total, (None, None, None, None))
    assert sum(stages) == total and min(stages) >= 1  # --epochs 8 used to leave warm-up at 0


def test_too_few_epochs_name_the_empty_stages() -> None:
    assert CompressOptions(epochs=2).empty_stages() == ["warm-up", "projection"]
    assert CompressOptions(epochs=8).empty_stages() == []
    assert CompressOptions(epochs=3, warmup=0).empty_stages() == []  # asked for: no warning


def _help_defaults() -> dict[str, str]:
    """``--flag`` -> the text in [brackets] at the end of its ``geta compress --help`` entry."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    compress = parser._subparsers._group_actions[0].choices["compress"]  # type: ignore[union-attr]
    out = {}
    for action in compress._actions:
        found = re.search(r"\[([^\]]+)\]$", action.help or "")
        if found and action.option_strings:
            out[action.option_strings[0]] = found.group(1)
    return out


def test_help_shows_the_defaults_the_code_applies() -> None:
    shown = _help_defaults()
    applied = options_from_args(_parse())  # nothing given: every default as the run uses it
    for f in fields(CompressOptions):
        flag = ("--no-" if f.default is True else "--") + f.name.replace("_", "-")  # on by default: --no-
        if f.default is not None and f.name != "device":
            assert flag in shown, flag
            again = CompressOptions.from_mapping({f.name: shown[flag]}, where=str)
            assert getattr(again, f.name) == getattr(applied, f.name), flag
    stages = applied.stage_epochs()
    for flag, epochs in zip(("--warmup", "--projection", "--joint", "--cooldown"), stages):
        assert shown[flag] == str(epochs)
    assert shown["--epochs"] == str(sum(stages))
    for flag, side in (("--dense-lr", 0), ("--lr", 1)):
        for optimizer in OPTIMIZERS:
            lr = CompressOptions(optimizer=optimizer).learning_rates()[side]
            assert f"{optimizer} {lr:g}" in shown[flag]


def test_flags_convert_and_validate() -> None:
    opts = options_from_args(
        _parse(
            "--weight-bits", "3,6", "--act-bits", "none", "--sparsity", "0.3", "--epochs", "4", "--lr", "0.05"
        )
    )
    assert opts.weight_bits == (3, 6) and opts.act_bits is None and opts.sparsity == 0.3
    assert opts.lr == 0.05 and sum(opts.stage_epochs()) == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weight-bits", "8,4"], "--weight-bits 8,4: LO must not exceed HI; pass 4,8"),
        (["--weight-bits", "1,4"], "bit widths must lie in [2, 16]"),
        (["--act-bits", "four"], "--act-bits must be LO,HI"),
        (["--sparsity", "1.5"], "--sparsity must be in [0.0, 0.95]"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--epochs", "2.5"], "--epochs must be an integer"),
        (["--optimizer", "lion"], "--optimizer must be one of sgd, adam, adamw"),
        (["--joint", "0", "--sparsity", "0.5"], "needs at least one joint (pruning) epoch"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(CliError) as info:
        options_from_args(_parse(*argv))
    assert message in str(info.value)


def test_config_file_yaml_and_toml_with_flag_precedence(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: vgg\nweight-bits: [3, 5]\nsparsity: 0.25\n")
    opts = options_from_args(_parse("--config", str(yaml_file), "--sparsity", "0.4"))
    assert (opts.model, opts.weight_bits, opts.sparsity) == ("vgg", (3, 5), 0.4)
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('act_bits = "none"\nepochs = 3\n')
    opts = options_from_args(_parse("--config", str(toml_file)))
    assert opts.act_bits is None and opts.epochs == 3


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "model: [unclosed\n", "is not valid YAML"),
        ("bad.toml", "model = \n", "is not valid TOML"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("typo.yaml", "sparsty: 0.3\n", "did you mean 'sparsity'"),
        ("value.yaml", "weight_bits: [9, 4]\n", "'weight_bits' in"),
    ],
)
def test_bad_config_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CliError, match=message.replace("[", r"\[")):
        options_from_args(_parse("--config", str(path)))


def test_options_round_trip_through_to_dict() -> None:
    opts = CompressOptions(weight_bits=(3, 4), act_bits=None, epochs=5)
    again = CompressOptions.from_mapping(opts.to_dict(), where=str)
    assert again == opts


def test_transformers_train_with_their_own_defaults_unless_told_otherwise() -> None:
    from geta.recipes import defaults_for
    from geta.recipes.defaults import CNN_DEFAULTS, HF_DEFAULTS, TRANSFORMER_DEFAULTS

    assert defaults_for("resnet") is CNN_DEFAULTS and defaults_for("mymodule:net") is CNN_DEFAULTS
    assert defaults_for("llama") is TRANSFORMER_DEFAULTS and defaults_for("vit") is TRANSFORMER_DEFAULTS
    assert defaults_for("hf:/some/dir") is HF_DEFAULTS
    llama = options_from_args(_parse("--model", "llama")).training()
    t = TRANSFORMER_DEFAULTS
    assert (llama.optimizer, llama.dense_lr, llama.lr, llama.clip_norm) == (
        "adamw",
        t.dense_lr,
        t.lr,
        t.clip_norm,
    )
    assert options_from_args(_parse()).training().optimizer == "sgd"  # resnet: the digits settings
    sgd = options_from_args(_parse("--model", "llama", "--optimizer", "sgd", "--clip-norm", "0")).training()
    assert (sgd.optimizer, sgd.dense_lr, sgd.lr, sgd.clip_norm) == ("sgd", 0.1, 0.05, 0.0)  # sgd's own rates
    hf = options_from_args(_parse("--model", "hf:/x", "--lr", "0.02")).training()
    assert (hf.optimizer, hf.lr, hf.dense_epochs) == ("adamw", 0.02, HF_DEFAULTS.dense_epochs)
    shown = _help_defaults()
    assert shown["--optimizer"] == "sgd; adamw for vit, llama, hf:DIR"
    assert f"vit, llama{', hf:DIR' if HF_DEFAULTS.lr == t.lr else ''}: adamw {t.lr:g}" in shown["--lr"]
    assert f"hf:DIR: adamw {HF_DEFAULTS.lr:g}" in shown["--lr"]


def test_distillation_follows_the_model_defaults_unless_given() -> None:
    from geta.recipes.defaults import CNN_DEFAULTS, HF_DEFAULTS

    assert options_from_args(_parse()).training().distill == CNN_DEFAULTS.distill == 0.0
    assert options_from_args(_parse("--model", "hf:/x")).training().distill == HF_DEFAULTS.distill
    for given in ("0", "0.5"):
        opts = options_from_args(_parse("--model", "hf:/x", "--distill", given))
        assert opts.training().distill == float(given)  # an explicit value wins, 0 turns it off


def test_quantize_embeddings_is_a_switch_on_the_command_line_and_a_bool_in_files(tmp_path: Path) -> None:
    assert options_from_args(_parse()).quantize_embeddings is False
    assert options_from_args(_parse("--quantize-embeddings")).quantize_embeddings is True
    config = tmp_path / "c.yaml"
    config.write_text("quantize_embeddings: yes\nseq_len: 96\n")
    opts = options_from_args(_parse("--config", str(config)))
    assert opts.quantize_embeddings is True and opts.seq_len == 96
    config.write_text("quantize_embeddings: maybe\n")
    with pytest.raises(CliError, match="must be true or false"):
        options_from_args(_parse("--config", str(config)))


def test_every_option_is_declared_once_with_what_the_cli_and_library_need() -> None:
    """Each field's `Option` gives the flag, its help and the library argument it sets; the
    arguments named exist in `geta.Config`, `geta.Schedule.from_epochs` and `geta.QASSO`."""
    import inspect

    import geta
    from geta.cli.options import option_spec

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    compress = parser._subparsers._group_actions[0].choices["compress"]  # type: ignore[union-attr]
    flags = {a.dest: a for a in compress._actions}
    accepted = {
        "config": set(inspect.signature(geta.Config).parameters),
        "schedule": set(inspect.signature(geta.Schedule.from_epochs).parameters),
        "qasso": set(inspect.signature(geta.QASSO).parameters),
    }
    for f in fields(CompressOptions):
        spec = option_spec(f.name)
        action = flags[f.name]
        switch_off = f.default is True  # a switch that is on by default is turned off by --no-NAME
        assert action.option_strings == [("--no-" if switch_off else "--") + f.name.replace("_", "-")]
        assert action.help is not None and action.help.startswith(spec.help)
        if spec.to is not None:
            assert spec.to[1] in accepted[spec.to[0]], (f.name, spec.to)


def test_options_set_the_library_arguments_they_declare() -> None:
    import geta

    opts = CompressOptions(
        sparsity=0.3, weight_bits=(2, 6), act_bits=None, selection="global", min_keep=0.2,
        quantize_embeddings=True, epochs=8, joint=3, lr=0.02, lr_quant=0.005, weight_decay=0.0,
        grad_clip=2.0, forget="descent", bit_rule="descent", optimizer="sgd", momentum=0.8,
    )  # fmt: skip
    config = geta.Config(**opts.arguments("config"))
    assert (config.target_sparsity, config.weight_bits, config.act_bits) == (0.3, (2, 6), None)
    assert (config.target_bops, config.selection.value, config.min_keep_fraction) == (None, "global", 0.2)
    assert CompressOptions(target_bops=0.01).arguments("config")["target_bops"] == 0.01
    assert config.quantize_embeddings and not config.uniform_layers
    assert tuple(opts.arguments("schedule").values()) == opts.stage_epochs()
    assert opts.arguments("qasso") == {
        "variant": "sgd", "lr": 0.02, "lr_quant": 0.005, "momentum": 0.8, "weight_decay": 0.0,
        "grad_clip": 2.0, "forget": "descent", "bits": "descent",
    }  # fmt: skip
    adamw = CompressOptions(optimizer="adamw").arguments("qasso")
    assert "momentum" not in adamw and adamw["lr"] == CompressOptions(optimizer="adamw").learning_rates()[1]

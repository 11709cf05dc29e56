"""Built-in data sets and model recipes: shapes, determinism, fake CIFAR/image folders, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from geta.recipes import RECIPES, RecipeError, Task, build_model, load_data, logits_of
from geta.recipes.text import SEQ_LEN


def test_digits_is_normalised_and_split_by_seed() -> None:
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.task is Task.CLASSIFY
    assert len(a.x_train) + len(a.x_test) == 1797 and len(a.x_test) == 359
    assert torch.equal(a.y_test, b.y_test) and not torch.equal(a.y_test, c.y_test)
    x = torch.cat([x for x, _ in a.batches(256)])
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.1


def test_batch_order_is_a_function_of_seed_and_epoch_and_can_start_late() -> None:
    data = load_data("digits")
    first = [y for _, y in data.batches(64, seed=3, epoch=2)]
    again = [y for _, y in data.batches(64, seed=3, epoch=2, start=5)]
    other = [y for _, y in data.batches(64, seed=3, epoch=3)]
    assert all(torch.equal(p, q) for p, q in zip(first[5:], again)) and len(again) == len(first) - 5
    assert not torch.equal(first[0], other[0])
    assert len(first) == data.num_batches(64)


def _fake_cifar(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with (root / name).open("wb") as f:
            pickle.dump(batch, f)


def test_cifar10_pickle_layout(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    data = load_data(f"cifar10:{tmp_path}")
    assert data.input_shape == (3, 32, 32) and len(data.x_train) == 30 and len(data.x_test) == 6
    x, y = next(data.batches(4, train=False))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3]


def test_cifar10_errors_name_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'nope'}")
    _fake_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(RecipeError, match="lacks test_batch"):
        load_data(f"cifar10:{tmp_path}")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(RecipeError, match="could not be read"):
        load_data(f"cifar10:{tmp_path}")


def test_imagefolder_split_and_train_test_layout(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 12), (i * 40, 0, 200)).save(folder / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.num_classes == 2 and data.input_shape == (3, 32, 32) and len(data.x_test) == 6
    flat = load_data(f"imagefolder:{tmp_path / 'train'}")
    assert len(flat.x_train) + len(flat.x_test) == 6
    with pytest.raises(RecipeError, match="at least two class sub-folders"):
        load_data(f"imagefolder:{tmp_path / 'train' / 'cat'}")


def test_text_default_corpus_and_file(tmp_path: Path) -> None:
    data = load_data("text")
    assert data.task is Task.LM and data.num_classes == 256 and data.input_shape == (SEQ_LEN,)
    assert torch.equal(data.x_train[0, 1:], data.y_train[0, :-1])
    file = tmp_path / "t.txt"
    file.write_text("hello world " * 200)
    assert len(load_data(f"text:{file}").x_train) > 0
    file.write_text("short")
    with pytest.raises(RecipeError, match="language modelling needs at least"):
        load_data(f"text:{file}")


@pytest.mark.parametrize("spec", ["mnist", "digits:/tmp", "cifar10", "text:/no/such/file"])
def test_bad_data_specs(spec: str) -> None:
    with pytest.raises(RecipeError):
        load_data(spec)


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "llama"])
def test_image_recipes_build_and_run(name: str) -> None:
    data = load_data("digits")
    model = build_model(name, data, seed=0)
    again = build_model(name, data, seed=0)
    x = data.example(3)[0]
    assert logits_of(model(x)).shape == (3, 10)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_llama_recipe_returns_logits() -> None:
    pytest.importorskip("transformers")
    data = load_data("text")
    model = build_model("llama", data)
    assert model(data.example(2)[0]).shape == (2, SEQ_LEN, 256)


def test_recipe_and_data_must_match() -> None:
    with pytest.raises(RecipeError, match="needs a text data set"):
        build_model("llama", load_data("digits"))
    with pytest.raises(RecipeError, match="needs an image data set"):
        build_model("resnet", load_data("text"))
    with pytest.raises(RecipeError, match="unknown model 'resnet50'"):
        build_model("resnet50", load_data("digits"))


def test_user_factory_gets_the_data_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def net(num_classes, in_channels):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, num_classes))\n"
        "def not_a_module():\n    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    data = load_data("digits")
    assert build_model("my_models:net", data)(data.example(2)[0]).shape == (2, 10)
    with pytest.raises(RecipeError, match=r"returned int, not an nn\.Module"):
        build_model("my_models:not_a_module", data)
    with pytest.raises(RecipeError, match="has no callable 'missing'"):
        build_model("my_models:missing", data)
    with pytest.raises(RecipeError, match="could not be imported"):
        build_model("no_such_module_xyz:net", data)

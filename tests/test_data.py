"""The data sets: determinism, ground truth, the user's folders, bad files, and the order of batches."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llamagen.data import open_dataset
from llamagen.data.batches import StepBatches, collate_images, sample_index, step_loader
from llamagen.data.digits import TEST_IMAGES, Digits
from llamagen.data.folders import CaptionedImages, ImageFolder
from llamagen.data.shapes import (
    BACKGROUNDS,
    CLASS_NAMES,
    COLOURS,
    HELD_OUT_PAIRS,
    ShapeAttributes,
    Shapes,
    class_attributes,
    describe,
    recaption,
    render,
)


def test_shapes_are_a_pure_function_of_seed_and_index():
    a, b = Shapes(size=32, seed=4), Shapes(size=32, seed=4)
    assert torch.equal(a[7]["image"], b[7]["image"]) and a[7]["caption"] == b[7]["caption"]
    assert not torch.equal(a[7]["image"], a[8]["image"])
    assert not torch.equal(a[7]["image"], Shapes(size=32, seed=5)[7]["image"])


def test_shape_images_show_their_attributes():
    attributes = ShapeAttributes("square", "blue", "large", "top left", "white")
    pixels = np.asarray(render(attributes, size=60))
    # The object sits in the top-left cell, in its colour; the other cells hold only the background.
    assert tuple(pixels[10, 10]) == COLOURS["blue"]
    assert (pixels[25:, :] == BACKGROUNDS["white"]).all() and (pixels[:, 25:] == BACKGROUNDS["white"]).all()
    # Anti-aliased: edge pixels mix the two colours.
    blend = pixels[:25, :25].reshape(-1, 3)
    assert any(tuple(p) not in (COLOURS["blue"], BACKGROUNDS["white"]) for p in blend)


def test_every_shape_covers_a_sensible_area_at_every_size():
    areas = {}
    for shape in ("circle", "square", "triangle", "star", "cross"):
        for size in ("small", "large"):
            pixels = np.asarray(render(ShapeAttributes(shape, "red", size, "center", "black"), size=64))
            areas[shape, size] = (np.abs(pixels.astype(int) - BACKGROUNDS["black"]).sum(-1) > 0).sum()
    for shape in ("circle", "square", "triangle", "star", "cross"):
        assert 20 < areas[shape, "small"] < areas[shape, "large"] < 64 * 64 / 9, shape


def test_class_ids_name_the_shape_and_colour():
    assert len(CLASS_NAMES) == 40 and CLASS_NAMES[0] == "red circle" and CLASS_NAMES[39] == "pink cross"
    for index in (0, 17, 39):
        item = Shapes(size=16, seed=0)[index]
        attributes = item["attributes"]
        assert CLASS_NAMES[item["label"]] == f"{attributes['colour']} {attributes['shape']}"
        assert class_attributes(item["label"]) == (attributes["shape"], attributes["colour"])
        assert attributes["colour"] in item["caption"] and attributes["shape"] in item["caption"]
    with pytest.raises(ValueError, match="outside"):
        class_attributes(40)
    with pytest.raises(ValueError, match="unknown colour"):
        ShapeAttributes("star", "teal", "small", "top", "black")


def test_captioned_shapes_never_show_the_held_out_pairs():
    captioned = Shapes(size=16, seed=1, captioned=True)
    pairs = {(a["shape"], a["colour"]) for a in (captioned[i]["attributes"] for i in range(600))}
    assert not pairs & HELD_OUT_PAIRS and len(pairs) == 35
    plain = Shapes(size=16, seed=1)
    assert {(a["shape"], a["colour"]) for a in (plain[i]["attributes"] for i in range(600))} >= HELD_OUT_PAIRS


def test_captions_say_which_attributes_they_state():
    data = Shapes(size=16, seed=4)
    phrases = {"size": ("small", "large"), "background": ("black", "gray", "white")}
    for item in (data[i] for i in range(200)):
        stated = item["stated"].split(",")
        assert stated[:2] == ["shape", "colour"]
        for name, words in phrases.items():
            assert (name in stated) == any(word in item["caption"] for word in words), (item["caption"], stated)


def test_an_item_is_recaptioned_in_its_own_phrasing():
    data = Shapes(size=16, seed=4)
    for item in (data[i] for i in range(100)):
        assert recaption(item) == item["caption"]
        other = "star" if item["attributes"]["shape"] != "star" else "circle"
        changed = recaption(item, shape=other)
        assert changed.replace(other, item["attributes"]["shape"]).split() == item["caption"].split()
    assert recaption({"attributes": {"shape": "star", "colour": "red", "size": "small", "position": "top",
                                     "background": "gray"}, "stated": "shape,colour", "phrasing": 0},
                     colour="orange") == "an orange star"  # fmt: skip


def test_a_caption_can_state_chosen_attributes():
    attributes = ShapeAttributes("cross", "orange", "small", "bottom", "gray")
    assert describe(attributes, ["size", "background"]).text == "a small orange cross on a gray background"
    assert describe(attributes, [], template=3).text == "orange cross"
    assert describe(attributes, ["position"], template=1).stated == ("shape", "colour", "position")
    with pytest.raises(ValueError, match="unknown attributes"):
        describe(attributes, ["texture"])
    with pytest.raises(ValueError, match="template 4"):
        describe(attributes, [], template=4)
    # The captions a text-to-image model was trained on stay what they were (the codes extracted from them).
    captioned = Shapes(size=16, seed=0, captioned=True)
    assert captioned[0]["caption"] == "a large blue cross in the top right corner on a black background"
    assert captioned[1]["caption"] == "pink triangle on the right" and captioned[1]["stated"] == "shape,colour,position"


def test_held_out_pairs_alone_can_be_drawn():
    from llamagen.data.shapes import HELD_OUT_PAIRS

    data = Shapes(size=16, seed=5, only_held_out_pairs=True)
    pairs = {(a["shape"], a["colour"]) for a in (data[i]["attributes"] for i in range(100))}
    assert pairs == set(HELD_OUT_PAIRS)
    with pytest.raises(ValueError, match="draws nothing else"):
        Shapes(captioned=True, only_held_out_pairs=True)


def test_captions_vary_and_sometimes_leave_things_out():
    captions = [Shapes(size=16, seed=2)[i]["caption"] for i in range(300)]
    assert len(set(captions)) > 150
    assert any("background" not in c and " on " not in c for c in captions)
    assert any("small" not in c and "large" not in c for c in captions)


def test_digits_are_deterministic_upsampled_rgb_with_a_held_out_split():
    train, test = Digits("train"), Digits("test")
    assert len(test) == TEST_IMAGES and len(train) + len(test) == 1797
    item = train[3]
    assert item["image"].shape == (3, 32, 32) and item["label"] == 3
    assert torch.equal(item["image"][0], item["image"][2])
    assert torch.equal(train[3]["image"], Digits("train")[3]["image"])
    assert torch.equal(train[3 + len(train)]["image"], item["image"])  # epochs repeat the images
    with pytest.raises(ValueError, match="unknown split"):
        Digits("validation")


def _write_images(folder, count, size=(40, 30)):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((size[1], size[0], 3), 30 * i, np.uint8)).save(folder / f"{i}.png")


def test_an_imagenet_folder_gives_labelled_random_crops(tmp_path):
    _write_images(tmp_path / "n01" / "sub", 2)
    _write_images(tmp_path / "n02", 3)
    (tmp_path / "n02" / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path, size=24, seed=0)
    assert len(data) == 5 and data.class_names == ("n01", "n02")
    assert [data[i]["label"] for i in range(5)] == [0, 0, 1, 1, 1]
    assert data[1]["image"].shape == (3, 24, 24)
    assert torch.equal(data[1]["image"], ImageFolder(tmp_path, size=24, seed=0)[1]["image"])


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    _write_images(tmp_path / "a", 3)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    data = ImageFolder(tmp_path, size=16)
    batch = collate_images([data[i] for i in range(len(data))])
    assert batch["skipped"] == 2 and batch["image"].shape == (3, 3, 16, 16)


def test_a_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images in"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="no data folder"):
        ImageFolder(tmp_path / "missing")


def test_captioned_images_read_a_jsonl_manifest(tmp_path):
    _write_images(tmp_path / "img", 2)
    lines = [{"path": "img/0.png", "caption": "dark"}, {"path": "img/1.png", "caption": "lighter"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    data = open_dataset(f"captions:{tmp_path / 'captions.jsonl'}", size=16)
    assert isinstance(data, CaptionedImages) and [data[i]["caption"] for i in range(2)] == ["dark", "lighter"]
    (tmp_path / "bad.jsonl").write_text('{"path": "img/0.png"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        CaptionedImages(tmp_path / "bad.jsonl")


def test_gradios_photos_widen_the_training_photos_and_hold_out_none():
    from llamagen.data.photos import GRADIO_PHOTOS, HELD_OUT_PHOTOS, TRAINING_PHOTOS, PhotoCrops

    wide = open_dataset("photos+gradio", size=32, seed=3)
    assert isinstance(wide, PhotoCrops) and wide.names == TRAINING_PHOTOS + tuple(GRADIO_PHOTOS)
    assert open_dataset("photos", size=32).names == TRAINING_PHOTOS
    assert not set(wide.names) & set(HELD_OUT_PHOTOS)
    assert torch.equal(wide[7]["image"], PhotoCrops(size=32, seed=3, photos="photos+gradio")[7]["image"])
    with pytest.raises(ValueError, match=r"unknown photo set 'photos\+more'"):
        PhotoCrops(photos="photos+more")


def test_unknown_data_sets_are_named():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        open_dataset("imagenet", size=32)


def test_finite_data_sets_are_shuffled_per_epoch_and_seen_once_each():
    data = Digits("test")
    first_epoch = [sample_index(data, g, seed=0) for g in range(len(data))]
    assert sorted(first_epoch) == list(range(len(data))) and first_epoch != sorted(first_epoch)
    second_epoch = [sample_index(data, g, seed=0) - len(data) for g in range(len(data), 2 * len(data))]
    assert sorted(second_epoch) == list(range(len(data))) and second_epoch != first_epoch
    assert sample_index(Shapes(), 12345, seed=0) == 12345  # procedural: every index is a new draw


def test_batches_depend_only_on_the_step_and_split_across_processes():
    data = Digits("test")
    whole = list(StepBatches(data, batch_size=4, start=0, steps=5, seed=1))
    assert list(StepBatches(data, batch_size=4, start=3, steps=5, seed=1)) == whole[3:]
    halves = [list(StepBatches(data, 4, 0, 5, 1, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == whole
    with pytest.raises(ValueError, match="not divisible"):
        StepBatches(data, batch_size=5, start=0, steps=1, seed=0, world=2)


def test_worker_processes_give_the_same_batches():
    data = Shapes(size=16, seed=3)
    in_process = [b["image"] for b in step_loader(data, 4, 2, 5, seed=0)]
    in_workers = [b["image"] for b in step_loader(data, 4, 2, 5, seed=0, workers=2)]
    assert len(in_process) == 3 and all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))


def test_samples_are_the_data_sets_own_items():
    from llamagen.data.samples import image_set, sample_image
    from llamagen.data.shapes import Shapes
    from llamagen.images import tensor_to_pil

    expected = tensor_to_pil(Shapes(size=64, seed=0)[2]["image"][None])[0]
    assert np.array_equal(np.asarray(sample_image("shapes 2")), np.asarray(expected))
    digits = image_set("digits (64)")
    assert len(digits) == 64 and digits[0].size == (32, 32)
    assert [image.size for image in image_set("held-out photos")] == [(640, 427), (640, 427), (512, 600)]
    with pytest.raises(ValueError, match="unknown sample 'shapes 9'"):
        sample_image("shapes 9")

"""What the apps and notebooks draw on: codebook statistics and geometry, token surgery, class blends, pictures."""

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import small, small_tokenizer
from PIL import Image

from llamagen.analysis.captions import leave_out_attributes
from llamagen.analysis.codebook import (
    code_counts,
    code_patches,
    codebook_digest,
    codebook_vectors,
    nearest_codes,
    nearest_neighbours,
    project_2d,
    save_projection,
    stored_projection,
)
from llamagen.analysis.interpolation import blended_class_generator
from llamagen.analysis.pictures import (
    code_map,
    codebook_figure,
    condition_use_figure,
    error_map,
    labelled_rows,
)
from llamagen.data.shapes import BACKGROUNDS, OPTIONAL_ATTRIBUTES, POSITIONS, SIZES, ShapeAttributes, describe, render
from llamagen.generation import generate
from llamagen.images import pil_to_tensor


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_code_counts_are_the_tokenizers_codes():
    tokenizer = small_tokenizer()
    images = [random_image(16, 16, seed) for seed in range(3)] + [random_image(10, 7)]  # the last one is padded
    counts = code_counts(tokenizer, images)
    assert counts.sum() == 3 * 16 + 3 * 2  # 4x4 tokens each, and 3x2 for the padded 10x7 image
    expected = torch.bincount(tokenizer.tokenize(pil_to_tensor(images[0])).flatten(), minlength=64)
    assert torch.equal(code_counts(tokenizer, images[:1]), expected)


def test_a_large_image_is_counted_tile_by_tile(monkeypatch):
    import llamagen.analysis.codebook as codebook

    monkeypatch.setattr(codebook, "COUNT_TILE", 16)
    tokenizer = small_tokenizer()
    large = random_image(36, 16)  # 36 wide: tiles 16, 16 and 4 pixels wide
    tiles = [large.crop((left, 0, min(left + 16, 36), 16)) for left in (0, 16, 32)]
    expected = sum(torch.bincount(tokenizer.tokenize(pil_to_tensor(tile)).flatten(), minlength=64) for tile in tiles)
    assert torch.equal(code_counts(tokenizer, [large]), expected) and int(expected.sum()) == 16 + 16 + 4


def test_nearest_codes_are_sorted_by_distance_and_exclude_the_code():
    tokenizer = small_tokenizer()
    vectors = codebook_vectors(tokenizer)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(64), atol=1e-5)  # the preset's codebook is l2-normalised
    neighbours = nearest_codes(tokenizer, 5, 6)
    distances = (vectors[neighbours] - vectors[5]).pow(2).sum(1)
    assert 5 not in neighbours and torch.all(distances[1:] >= distances[:-1])
    others = torch.tensor([i for i in range(64) if i not in neighbours and i != 5])
    assert (vectors[others] - vectors[5]).pow(2).sum(1).min() >= distances.max()
    with pytest.raises(ValueError, match="outside the codebook"):
        nearest_codes(tokenizer, 64, 3)


def test_pca_projection_keeps_the_two_largest_directions():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(500, 8, generator=generator) * torch.tensor([5.0, 3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    points = project_2d(vectors)
    assert points.shape == (500, 2)
    assert np.var(points, axis=0) == pytest.approx([25.0, 9.0], rel=0.2)
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(vectors, "tsne")


def test_a_stored_projection_is_read_back_only_for_the_codebook_it_maps(tmp_path):
    tokenizer = small_tokenizer()
    path = tmp_path / "map.npz"
    assert stored_projection(tokenizer, path, "pca") is None  # no file yet
    save_projection(tokenizer, path, "pca")
    points = stored_projection(tokenizer, path, "pca")
    np.testing.assert_allclose(points, project_2d(codebook_vectors(tokenizer)), atol=1e-2, rtol=1e-3)  # float16
    assert stored_projection(tokenizer, path, "pca", seed=1) is None and stored_projection(tokenizer, path) is None
    with torch.no_grad():
        tokenizer.quantize.embedding.weight[3, 0] += 0.5  # one entry of a retrained codebook
    assert stored_projection(tokenizer, path, "pca") is None
    shipped = small_tokenizer().to(torch.bfloat16)  # as weights ship; loaded in float32, the same entries
    assert codebook_digest(shipped) == codebook_digest(copy.deepcopy(shipped).float())


def test_notebook_01s_stored_map_is_of_the_shipped_photo_tokenizer():
    """Notebook 01 reads photo-vq's UMAP from a file rather than spending a minute on it: the file must be of the
    codebook that ships (after photo-vq is retrained: `save_projection(photo-vq, that file)`)."""
    from pathlib import Path

    from llamagen.tokenizer.loading import load_tokenizer

    stored = np.load(Path(__file__).parents[1] / "notebooks" / "data" / "photo-vq_umap_seed0.npz")
    assert str(stored["codebook"]) == codebook_digest(load_tokenizer("photo-vq", device="cpu"))
    assert stored["points"].shape == (16384, 2) and (str(stored["method"]), int(stored["seed"])) == ("umap", 0)


def test_the_exact_neighbour_graph_for_umap_matches_a_brute_force_search_across_chunks():
    points = torch.randn(300, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    indices, distances = nearest_neighbours(points, 5, chunk=64)
    assert indices.shape == distances.shape == (300, 5)
    assert (indices[:, 0] == np.arange(300)).all() and (distances[:, 0] == 0).all()  # each point first, as UMAP's
    for i in (0, 63, 64, 299):  # both sides of a chunk's edge
        by_hand = np.linalg.norm(points.numpy() - points[i].numpy(), axis=1)
        assert list(indices[i]) == list(np.argsort(by_hand)[:5])
        np.testing.assert_allclose(distances[i], np.sort(by_hand)[:5], atol=1e-12)


def test_each_code_alone_is_decoded_as_a_tile_of_itself():
    tokenizer = small_tokenizer()
    codes = tokenizer.tokenize(pil_to_tensor(random_image(16, 16)))[0]
    other = (int(codes[1, 2]) + 1) % 64
    patches = code_patches(tokenizer, [other, int(codes[1, 2])])
    assert patches.shape == (2, 3, 12, 12)  # 3x3 tiles of a downsample-4 tokenizer
    alone = tokenizer.detokenize(torch.full((1, 3, 3), other)).clamp(-1, 1)
    torch.testing.assert_close(patches[0], alone[0])  # batched, each code is decoded as if alone
    with pytest.raises(ValueError, match="outside the codebook"):
        code_patches(tokenizer, [other, 64])


def test_a_blend_at_the_ends_is_the_class_itself():
    gpt = small()
    view = blended_class_generator(gpt, 1, 3, [0.0, 0.5, 1.0])
    assert view.config.num_classes == 3 and gpt.config.num_classes == 5  # the original is untouched
    options = {"cfg_scale": 2.0, "top_k": 5}
    for blend, label in ((0, 1), (2, 3)):
        ours = generate(view, torch.tensor([blend]), generator=torch.Generator().manual_seed(7), **options)
        theirs = generate(gpt, torch.tensor([label]), generator=torch.Generator().manual_seed(7), **options)
        assert torch.equal(ours, theirs)
    table = gpt.cls_embedding.embedding_table.weight
    middle = view.cls_embedding.embedding_table.weight[1]
    assert torch.allclose(middle, (table[1] + table[3]) / 2)
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        blended_class_generator(gpt, 1, 5, [0.5])


def test_pictures_have_the_expected_sizes_and_colours():
    codes = torch.tensor([[0, 63], [63, 0]])
    picture = np.asarray(code_map(codes, 64, cell=8))
    assert picture.shape == (16, 16, 3)
    assert np.array_equal(picture[0, 0], picture[8, 8]) and not np.array_equal(picture[0, 0], picture[0, 8])
    image = random_image(20, 10)
    errors = np.asarray(error_map(image, image))
    assert errors.shape == (10, 20, 3) and len(np.unique(errors.reshape(-1, 3), axis=0)) == 1  # one colour: exact
    with pytest.raises(ValueError, match="differ in size"):
        error_map(image, random_image(10, 10))
    shares = {"true": torch.rand(3), "null": torch.rand(3)}
    assert condition_use_figure(torch.rand(16), grid=4, attention=shares).size[0] > 200
    counts = torch.zeros(64, dtype=torch.long)
    counts[:10] = torch.arange(1, 11)
    assert codebook_figure(np.random.default_rng(0).normal(size=(64, 2)), counts, selected=3).size[0] > 200


def test_labelled_rows_keep_every_pixel_enlarged_by_one_factor():
    rows = [random_image(40, 20, seed) for seed in range(2)] + [random_image(30, 10, 2)]
    picture = np.asarray(labelled_rows(rows, ["a", "b", "c"], min_height=50, label_width=100))
    assert picture.shape == (3 * (20 + 20 + 10) + 2 * 4, 100 + 3 * 40, 3)  # factor 3, gaps of 4 pixels
    top = 3 * 20 + 4
    assert np.array_equal(picture[top : top + 60 : 3, 100::3], np.asarray(rows[1]))
    with pytest.raises(ValueError, match="one label per row"):
        labelled_rows(rows, ["a"])


class CaptionOracle:
    """A stand-in text-to-image pipeline that draws exactly what a caption states and chooses the rest at
    random: what a perfect generator would do."""

    model_type, device = "t2i", torch.device("cpu")

    def __init__(self, attributes: ShapeAttributes):
        self.attributes = attributes
        optional = OPTIONAL_ATTRIBUTES
        subsets = [[name for bit, name in enumerate(optional) if mask >> bit & 1] for mask in range(2 ** len(optional))]
        self.stated = {describe(attributes, subset).text: subset for subset in subsets}

    def __call__(self, prompts, seed, num_images_per_condition, **sampling):
        rng = np.random.default_rng(seed)
        choices = {"size": SIZES, "position": POSITIONS, "background": tuple(BACKGROUNDS)}
        stated, images = self.stated[prompts[0]], []
        for _ in range(num_images_per_condition):
            drawn = {name: values[rng.integers(len(values))] for name, values in choices.items() if name not in stated}
            images.append(pil_to_tensor(render(dataclasses.replace(self.attributes, **drawn)))[0])
        return SimpleNamespace(pixels=torch.stack(images))


def test_leaving_an_attribute_out_of_the_caption_is_measured_by_the_judge():
    attributes = ShapeAttributes("star", "red", "large", "top left", "black")
    rows, pictures = leave_out_attributes(CaptionOracle(attributes), attributes, images=24)
    assert [row["left_out"] for row in rows] == [None, "size", "position", "background"]
    assert pictures.shape == (4, 24, 3, 64, 64)
    assert rows[0]["caption"] == "a large red star in the top left corner on a black background"
    assert rows[1]["caption"] == "a red star in the top left corner on a black background"
    for row in rows:
        for name in ("shape", "colour", "size", "position", "background"):
            if name == row["left_out"]:  # drawn at random: the judge sees it vary
                assert row[name] < 0.8 and row[f"{name}_values"] >= 2, (row["left_out"], name)
            else:  # stated: every image has it
                assert row[name] == 1.0 and row[f"{name}_values"] == 1, (row["left_out"], name)
    with pytest.raises(ValueError, match="text-conditional"):
        leave_out_attributes(SimpleNamespace(model_type="c2i"), attributes)

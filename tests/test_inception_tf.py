"""The FID port of TensorFlow's Inception-v3 computes what pytorch-fid's network computes on the same weights,
resizes as TensorFlow 1 does, and gives the ADM evaluator's spatial features and unbiased class logits."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from llamagen.evaluation.fid import InceptionFeatures
from llamagen.evaluation.inception_tf import resize_like_tensorflow1
from llamagen.evaluation.sample_metrics import InceptionReader, read_set


@pytest.fixture(scope="module")
def pytorch_fid_network():
    """pytorch-fid's FID Inception, built as its `fid_inception_v3` builds it but with random weights (it
    downloads the real ones), its batch-norm statistics and classifier bias made non-trivial so that every
    difference in arithmetic shows."""
    from pytorch_fid import inception as fid

    network = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in (("Mixed_5b", fid.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", fid.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", fid.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", fid.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", fid.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", fid.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", fid.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", fid.FIDInceptionE_1(1280)),
                        ("Mixed_7c", fid.FIDInceptionE_2(2048))):  # fmt: skip
        setattr(network, name, block)
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    torch.nn.init.normal_(network.fc.bias, generator=generator)
    return network.eval()


@pytest.fixture(scope="module")
def port_weights(pytorch_fid_network, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(pytorch_fid_network.state_dict(), path)
    return path


def test_the_port_computes_pytorch_fids_network_and_torchvisions_blocks_would_not(pytorch_fid_network,
                                                                                 port_weights):  # fmt: skip
    ours = InceptionFeatures(port_weights)
    assert ours.graph == "tensorflow" and ours.name == "inception-v3 (tensorflow)"
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prepared = ours.prepared(images)
    # At 299 pixels no resizing; the graph's pixel scale: p in [0, 255] -> (p - 128) / 128.
    assert torch.allclose(prepared, ((images + 1) * 127.5 - 128) / 128, atol=1e-6)
    with torch.no_grad():
        pytorch_fid_network.fc, classifier = torch.nn.Identity(), pytorch_fid_network.fc
        try:
            expected = pytorch_fid_network(prepared)
        finally:
            pytorch_fid_network.fc = classifier
    pool = ours(images)
    assert torch.allclose(pool, expected, rtol=1e-4, atol=1e-5)
    # The control: the same weights in torchvision's blocks (average pools over the padding, no max pool).
    from torchvision.models import inception_v3

    plain = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False, num_classes=1008)
    plain.load_state_dict(pytorch_fid_network.state_dict())
    plain.fc = torch.nn.Identity()
    with torch.no_grad():
        assert (plain.eval()(prepared) - expected).abs().max() > 1e-2


def test_the_reader_gives_the_adm_evaluators_spatial_features_and_unbiased_class_logits(pytorch_fid_network,
                                                                                        port_weights):  # fmt: skip
    images = np.random.default_rng(2).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    readings = read_set(InceptionReader(port_weights), images)
    captured = {}
    hook = pytorch_fid_network.Mixed_6d.branch1x1.register_forward_hook(
        lambda module, inputs, output: captured.update(branch=output)
    )
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 128) / 128
    with torch.no_grad():
        try:
            logits = pytorch_fid_network(x)
        finally:
            hook.remove()
    # mixed_6/conv: Mixed_6d's 1x1 branch, 17 x 17, its first 7 channels, flattened as TensorFlow lays them out.
    spatial = captured["branch"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.allclose(readings.spatial, spatial, rtol=1e-4, atol=1e-5)
    unbiased = torch.softmax((logits - pytorch_fid_network.fc.bias).double(), -1).float()
    assert torch.allclose(readings.probabilities, unbiased, rtol=1e-3, atol=1e-7)
    assert not torch.allclose(readings.probabilities, torch.softmax(logits, -1), rtol=1e-2)  # the bias matters


@pytest.mark.parametrize("size", [256, 512, 37])
def test_resizing_is_tensorflow_1s_bilinear_rule(size):
    """Target pixel i reads source position i x in / out, edge pixels repeated: what scipy's order-1
    interpolation at those positions gives."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
    ours = resize_like_tensorflow1(image)
    positions = np.arange(299) * (size / 299)
    rows, columns = np.meshgrid(positions, positions, indexing="ij")
    for channel in range(3):
        expected = ndimage.map_coordinates(image[0, channel].numpy(), [rows, columns], order=1, mode="nearest")
        np.testing.assert_allclose(ours[0, channel].numpy(), expected, atol=1e-12)
    # Not torch's half-pixel rule, which reads other positions.
    half_pixel = torch.nn.functional.interpolate(image, size=(299, 299), mode="bilinear", align_corners=False)
    assert (half_pixel - ours).abs().max() > 1e-3


def test_an_adm_reference_batchs_statistics_are_used_with_the_port_alone(port_weights, tmp_path):
    """FID and sFID against the statistics the batch carries (the evaluator's, over more images than it holds);
    precision and recall against its images. The judge's features are not the graph's: it ignores them."""
    import json

    from llamagen.cli import main
    from llamagen.evaluation.fid import frechet_distance_of, gaussian_statistics

    rng = np.random.default_rng(3)
    samples, reference, other = (rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(3))
    reader = InceptionReader(port_weights)
    carried = read_set(reader, other)  # the statistics' own images, which the batch does not hold
    mu, sigma = gaussian_statistics(carried.pool.double().numpy())
    mu_s, sigma_s = gaussian_statistics(carried.spatial.double().numpy())
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    np.savez(tmp_path / "reference.npz", arr_0=reference, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    argv = ["eval", "samples", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "reference.npz")]
    assert main([*argv, "--inception", str(port_weights), "--out", str(tmp_path / "port.json")]) == 0
    results = json.loads((tmp_path / "port.json").read_text())
    fake = read_set(reader, samples)
    assert results["fid_reference"] == "the reference batch's statistics" and results["reference_images"] == 4
    assert results["fid"] == pytest.approx(frechet_distance_of(*gaussian_statistics(fake.pool.double().numpy()),
                                                               mu, sigma), rel=1e-5)  # fmt: skip
    assert results["sfid"] == pytest.approx(frechet_distance_of(*gaussian_statistics(fake.spatial.double().numpy()),
                                                                mu_s, sigma_s), rel=1e-5)  # fmt: skip
    assert main([*argv, "--judge", "shapes", "--out", str(tmp_path / "judge.json")]) == 0
    assert json.loads((tmp_path / "judge.json").read_text())["fid_reference"] == "the reference images"

"""LPIPS from user-supplied files (made here with random weights) and the PatchGAN's hinge losses."""

import pytest
import torch

from llamagen.evaluation.lpips import LPIPS, TAP_CHANNELS, load_lpips
from llamagen.training.discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Files laid out as torchvision's vgg16 checkpoint and lpips's vgg.pth, with random weights."""
    from torchvision.models import vgg16

    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}
    torch.save({**features, "classifier.0.bias": torch.zeros(4096)}, folder / "vgg16-397923af.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save(lins, folder / "vgg.pth")
    return folder / "vgg16-397923af.pth", folder / "vgg.pth"


def test_lpips_is_a_distance_on_images(lpips_files):
    lpips = load_lpips(*lpips_files)
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(lpips(a, a), torch.zeros(2))
    assert (lpips(a, b) > 0).all()
    torch.testing.assert_close(lpips(a, b), lpips(b, a))
    slightly = (a + 0.05 * torch.randn_like(a)).clamp(-1, 1)
    assert (lpips(a, slightly) < lpips(a, b)).all()


def test_lpips_passes_gradients_to_images_and_stays_frozen(lpips_files):
    lpips = load_lpips(*lpips_files)
    lpips.train()
    assert not lpips.training and not any(p.requires_grad for p in lpips.parameters())
    a = torch.zeros(1, 3, 16, 16, requires_grad=True)
    lpips(a, torch.ones(1, 3, 16, 16)).sum().backward()
    assert a.grad.abs().sum() > 0


def test_lpips_files_are_checked(lpips_files, tmp_path):
    vgg, lin = lpips_files
    with pytest.raises(ValueError, match=r"LPIPS's vgg\.pth expected"):
        load_lpips(vgg, vgg)
    negative = {f"lin{i}.model.1.weight": -torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match="non-negative"):
        load_lpips(vgg, tmp_path / "negative.pth")
    with pytest.raises(FileNotFoundError, match="no LPIPS weight file"):
        load_lpips(tmp_path / "missing.pth", lin)
    with pytest.raises(ValueError, match=r"compares two \(B, 3, H, W\)"):
        LPIPS()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_patch_discriminator_gives_a_logit_per_patch():
    logits = PatchDiscriminator()(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="at least 32 pixels"):
        PatchDiscriminator()(torch.zeros(1, 3, 16, 16))


def test_hinge_losses():
    assert hinge_discriminator_loss(torch.tensor([2.0]), torch.tensor([-2.0])) == 0  # confident and right
    assert hinge_discriminator_loss(torch.tensor([0.0]), torch.tensor([0.0])) == 1
    assert hinge_generator_loss(torch.tensor([1.0, 3.0])) == -2


def test_lpips_is_the_papers_weighted_distance_of_unit_features(lpips_files):
    """Eq. 1 of the LPIPS paper (Zhang et al., 2018), written out here over torchvision's own VGG16: at relu1_2,
    relu2_2, relu3_3, relu4_3 and relu5_3, features scaled to unit length over channels, their squared differences
    weighted per channel by the linear layer, averaged over positions, summed over the layers; the input first
    shifted and scaled as LPIPS's VGG expects. Checked by hand once: without the unit scaling, or summing over
    positions, it fails here."""
    import torch.nn.functional as F
    from torchvision.models import vgg16

    vgg_path, lin_path = lpips_files
    network = vgg16(weights=None).features.eval()
    network.load_state_dict(
        {k.removeprefix("features."): v for k, v in torch.load(vgg_path).items() if "features" in k}
    )
    weights = [w.view(1, -1, 1, 1) for w in torch.load(lin_path).values()]
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])

    def unit_features(images):
        x, found = (images - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1), []
        for index, layer in enumerate(network):
            x = layer(x)
            if index in (3, 8, 15, 22, 29):
                found.append(F.normalize(x, dim=1, eps=1e-10))
        return found

    torch.manual_seed(2)
    a, b = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        pairs = zip(weights, unit_features(a), unit_features(b), strict=True)
        expected = sum((w * (fa - fb) ** 2).sum(1).mean((1, 2)) for w, fa, fb in pairs)
        torch.testing.assert_close(load_lpips(*lpips_files)(a, b), expected, rtol=1e-5, atol=1e-7)

"""Normalisation: exact inverse, whitening, streamed fit, refusal of rank-deficient fits."""

import pytest
import torch

from difflens.dictionaries import Normalizer


def _aniso(n_tokens=4000, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 3, dim)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    return (torch.randn(n_tokens, dim, generator=g) * scales) @ basis.T + 50.0


@pytest.mark.parametrize("kind", ["none", "standardise", "pca"])
def test_round_trip(kind):
    x = _aniso()
    norm = Normalizer.fit(x.split(500), 12, kind)
    z = norm.normalize(x)
    back = norm.denormalize(z)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-2)


def test_pca_whitens_and_streaming_matches_one_shot():
    x = _aniso()
    streamed = Normalizer.fit(x.split(333), 12, "pca")
    whole = Normalizer.fit([x], 12, "pca")
    torch.testing.assert_close(streamed.variances, whole.variances, rtol=1e-5, atol=1e-3)
    z = streamed.normalize(x).double()
    cov = torch.cov(z.T)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)
    assert (streamed.variances[:-1] >= streamed.variances[1:]).all()


def test_standardise_unit_variance():
    x = _aniso()
    z = Normalizer.fit(x.split(1000), 12, "standardise").normalize(x)
    torch.testing.assert_close(z.std(0), torch.ones(12), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.mean(0), torch.zeros(12), atol=1e-3, rtol=0)


def test_refuses_too_few_tokens():
    with pytest.raises(ValueError, match="at least 120 tokens"):
        Normalizer.fit([_aniso(100)], 12, "pca")


def test_nan_and_width_errors():
    x = _aniso(200)
    x[3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        Normalizer.fit([x], 12, "pca")
    with pytest.raises(ValueError, match="expected activations of shape"):
        Normalizer.fit([torch.randn(300, 11)], 12, "pca")
    norm = Normalizer(12, "standardise")
    with pytest.raises(ValueError, match="width 5"):
        norm.normalize(torch.randn(3, 5))


def test_steering_direction_matches_decode_difference():
    from difflens.dictionaries import SAEConfig, TopKSAE

    x = _aniso()
    norm = Normalizer.fit([x], 12, "pca")
    sae = TopKSAE(12, SAEConfig(num_latents=24, k=3), normalizer=norm)
    d = sae.feature_directions([5])[0]
    z0 = torch.zeros(1, 12)
    delta = norm.denormalize(z0 + sae.W_dec[5].detach()) - norm.denormalize(z0)
    torch.testing.assert_close(d, delta[0] / delta.norm(), rtol=1e-4, atol=1e-5)


def test_in_frame_standardises_other_data_along_the_frames_axes():
    """Per-step normalisers share one frame: another data set (other eigenvectors, mean, scales) is centred and
    standardised along the frame's axes, not rotated into its own, and the map still inverts exactly."""
    from difflens.dictionaries.normalization import accumulate

    frame = Normalizer.fit([_aniso(seed=0)], 12, "pca")
    other = _aniso(seed=1) * 0.1 - 7.0
    own = Normalizer.fit([other], 12, "pca")
    norm = Normalizer.in_frame(accumulate([other], 12), frame)
    torch.testing.assert_close(norm.rotation, frame.rotation)
    assert not torch.allclose(own.rotation.abs(), frame.rotation.abs(), atol=0.1)  # its own axes differ
    z = norm.normalize(other).double()
    torch.testing.assert_close(z.mean(0), torch.zeros(12, dtype=torch.float64), rtol=0, atol=1e-3)
    torch.testing.assert_close(z.var(0), torch.ones(12, dtype=torch.float64), rtol=1e-3, atol=1e-3)
    assert float((z.T @ z / len(z) - torch.eye(12, dtype=torch.float64)).abs().max()) > 0.1  # standardised, not white
    torch.testing.assert_close(norm.denormalize(norm.normalize(other)), other, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="at least 120 tokens"):
        Normalizer.in_frame(accumulate([other[:50]], 12), frame)

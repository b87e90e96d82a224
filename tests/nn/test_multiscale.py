"""The multiscale pieces of fastgen.nn (GaussianPrior, Split, MultiscaleFlow) and RealNVP's
coupling network: round trips and log-determinants against the autograd Jacobian (float64),
the priors' densities, and bad arguments."""

import pytest
import torch

from fastgen.nn import AffineCoupling, FlowSequential, GaussianPrior, MultiscaleFlow, Split, Squeeze, resnet_coupling_net

from ..helpers import logdet_by_jacobian, randomize

LABELS = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("num_classes", [None, 3])
def test_gaussian_prior_standardizes_its_gaussian(num_classes):
    prior = randomize(GaussianPrior((2, 3, 3), context_channels=4, num_classes=num_classes).double(), 0.3)
    z = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    context = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    cond = None if num_classes is None else LABELS
    eps, logdet = prior(z, cond, context)
    mean, log_std = prior.mean_log_std(3, cond, context)
    want = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1)
    torch.testing.assert_close(standard + logdet, want, atol=1e-10, rtol=1e-10)
    back, inv_logdet = prior.inverse(eps, cond, context)
    torch.testing.assert_close(back, z, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-12, rtol=1e-12)
    if num_classes:
        other, _ = prior(z, torch.zeros(3, dtype=torch.long), context)
        assert not torch.allclose(other[1:], eps[1:])


def test_priors_start_standard_normal():
    z = torch.randn(3, 4, 2, 2)
    kept, eps, logdet = Split((8, 2, 2), learned_prior=True, num_classes=3)(torch.cat([z, z], 1), LABELS)
    assert torch.equal(eps, z) and torch.equal(kept, z) and torch.equal(logdet, torch.zeros(3))


@pytest.mark.parametrize("learned_prior", [False, True])
def test_multiscale_flow_round_trip_and_logdet(learned_prior):
    def level(c):
        return FlowSequential(Squeeze(), AffineCoupling(4 * c, [6], mask="channel", image=True))

    flow = MultiscaleFlow([level(1), level(2)], [Split((4, 2, 2), learned_prior=learned_prior)])
    flow = randomize(flow.double(), 0.3)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    latents, logdet = flow(x)
    assert [tuple(t.shape) for t in latents] == [(3, 2, 2, 2), (3, 8, 1, 1)]
    back, inv_logdet = flow.inverse(latents)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-12, rtol=1e-12)
    flat = lambda e: torch.cat([t.flatten(1) for t in flow(e)[0]], 1)  # noqa: E731
    torch.testing.assert_close(logdet, logdet_by_jacobian(flat, x), atol=1e-10, rtol=1e-10)


def test_one_channel_checkerboard_coupling_with_a_resnet():
    net = lambda i, o: resnet_coupling_net(i, o, hidden=4, blocks=2)  # noqa: E731
    layer = randomize(AffineCoupling(1, net, mask="checkerboard", image=True).double(), 0.3)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    passed = (torch.arange(4)[:, None] + torch.arange(4)) % 2 == 0
    assert torch.equal(y[:, 0][:, passed], x[:, 0][:, passed]) and not torch.allclose(y, x)
    torch.testing.assert_close(logdet, logdet_by_jacobian(lambda e: layer(e)[0], x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(layer.inverse(y)[0], x, atol=1e-12, rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"shape must be \(C, H, W\)"):
        GaussianPrior((2, 3))
    with pytest.raises(ValueError, match="shape's C must be >= 2"):
        Split((1, 2, 2))
    with pytest.raises(ValueError, match="num_classes needs learned_prior"):
        Split((2, 2, 2), num_classes=3)
    with pytest.raises(ValueError, match="one split fewer than levels"):
        MultiscaleFlow([Squeeze(), Squeeze()], [])
    with pytest.raises(TypeError, match="splits must be Split layers"):
        MultiscaleFlow([Squeeze(), Squeeze()], [Squeeze()])
    with pytest.raises(ValueError, match="needs 2 latents"):
        MultiscaleFlow([Squeeze(), Squeeze()], [Split((4, 1, 1))]).inverse([torch.zeros(1, 4, 1, 1)])
    prior = GaussianPrior((2, 2, 2), context_channels=1, num_classes=3)
    with pytest.raises(ValueError, match=r"context must have shape \(3, 1, 2, 2\)"):
        prior(torch.zeros(3, 2, 2, 2), LABELS)
    with pytest.raises(ValueError, match=r"cond must be class labels of shape \(3,\)"):
        prior(torch.zeros(3, 2, 2, 2), None, torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2, 2, 2\)"):
        prior(torch.zeros(3, 2, 4, 4), LABELS, torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match="hidden"):
        resnet_coupling_net(2, 4, hidden=0, blocks=1)
    with pytest.raises(ValueError, match="resnet_coupling_net: in_features must be >= 1, got -1"):
        resnet_coupling_net(-1, 4, 2, 1)
    with pytest.raises(ValueError, match="resnet_coupling_net: out_features must be >= 1, got 0"):
        resnet_coupling_net(2, 0, 2, 1)


@pytest.mark.parametrize(
    "cond,error,match",
    [
        (torch.tensor([0, 3, 1]), ValueError, r"cond must have values in \[0, 3\), got values in \[0, 3\]"),
        (torch.tensor([0, -1, 1]), ValueError, r"cond must have values in \[0, 3\), got values in \[-1, 1\]"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "cond must have an integer dtype, got torch.float32"),
        (torch.tensor([0, 1]), ValueError, r"cond must have shape \(3,\)"),
    ],
)
def test_bad_class_labels_raise(cond, error, match):
    """Labels out of range used to raise IndexError (or wrap around), float ones RuntimeError."""
    prior = GaussianPrior((2, 2, 2), num_classes=3)
    split = Split((4, 2, 2), learned_prior=True, num_classes=3)
    with pytest.raises(error, match="GaussianPrior: " + match):
        prior(torch.zeros(3, 2, 2, 2), cond)
    with pytest.raises(error, match=match):
        prior.inverse(torch.zeros(3, 2, 2, 2), cond)
    with pytest.raises(error, match=match):
        split(torch.zeros(3, 4, 2, 2), cond)
    eps, logdet = prior(torch.zeros(3, 2, 2, 2), LABELS.to(torch.int32))
    torch.testing.assert_close(eps, prior(torch.zeros(3, 2, 2, 2), LABELS)[0])
    with pytest.raises(ValueError, match="channels"):
        AffineCoupling(1, [4], mask="channel", image=True)

"""PreActResNet-18: parameter count checked against a layer-by-layer count written out here, shapes."""
import pytest
import torch

from deep.preact_resnet import PreActResNet18, preact_resnet18


def _conv(cin, cout, k):
    return cin * cout * k * k  # no bias


def _bn(c):
    return 2 * c  # weight and bias


def _count_by_hand(num_classes, final_bn, w=64):
    """docs/protocol.md architecture: stem conv, stages [2,2,2,2] of pre-act basic blocks, final BN, linear."""
    total = _conv(3, w, 3)
    cin = w
    for stage in range(4):
        c = w * 2 ** stage
        for block in range(2):
            total += _bn(cin) + _conv(cin, c, 3) + _bn(c) + _conv(c, c, 3)
            if cin != c:
                total += _conv(cin, c, 1)  # projection shortcut
            cin = c
    if final_bn:
        total += _bn(cin)
    return total + cin * num_classes + num_classes


def test_parameter_count_cifar10_cifar100():
    # the widely quoted figure for the variant without final BN
    assert _count_by_hand(10, final_bn=False) == 11_171_146
    assert _count_by_hand(10, final_bn=True) == 11_172_170
    for num_classes in (10, 100):
        for final_bn in (True, False):
            m = preact_resnet18(num_classes=num_classes, final_bn=final_bn)
            assert sum(p.numel() for p in m.parameters()) == _count_by_hand(num_classes, final_bn)


def test_output_shapes_and_normalisation_inside():
    torch.manual_seed(0)
    for num_classes in (10, 100):
        m = PreActResNet18(num_classes=num_classes, width=4).eval()
        out = m(torch.rand(3, 3, 32, 32))
        assert out.shape == (3, num_classes) and torch.isfinite(out).all()
    # gradient w.r.t. the [0,1] input exists (attacks work in pixel space)
    m = PreActResNet18(width=4).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # normalisation is part of forward: shifting mean by a constant changes the output accordingly
    m2 = PreActResNet18(width=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
    m2.load_state_dict({k: v for k, v in m.state_dict().items() if k not in ("mean", "std")}, strict=False)
    xn = (x.detach() - m.mean) / m.std
    torch.testing.assert_close(m2(xn), m(x.detach()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_classes"):
        PreActResNet18(num_classes=1)

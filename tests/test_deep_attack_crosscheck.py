"""Our PGD (samrobust.attacks.pgd) against an independent implementation, torchattacks' PGD (l_inf) and PGDL2.

Both attacks without random start on the same model (PreActResNet-18 of width 4 on 8x8 one-channel images,
fixed weights, eval mode), same radius, step size and number of steps, last iterate. torchattacks
maximises the mean cross-entropy, ours the summed one: the gradients differ by the factor 1/batch only, a
power of two here, so they are exactly proportional. l_inf: with inputs, eps and step on a grid of 1/256
every sum, difference and clip is exact in float32, so the two attacks must agree bit for bit (ours keeps
delta and forms x + delta, torchattacks keeps x_adv and forms x_adv - x). l2: both take the step
alpha * g / ||g|| and project onto the ball and the box, with different guards against division by zero
(ours also rescales g by its largest entry first), so they agree to float precision.
"""
import pytest
import torch

from samrobust.attacks import pgd
from deep.preact_resnet import PreActResNet18

torchattacks = pytest.importorskip("torchattacks")

BATCH = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")  # tests/conftest.py


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = PreActResNet18(num_classes=10, width=4, mean=(0.5,), std=(0.25,)).eval()
    for m in model.modules():                     # non-trivial running statistics for eval mode
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 257, (BATCH, 1, 8, 8), generator=g).float() / 256   # on the 1/256 grid, 0 and 1 too
    y = torch.randint(0, 10, (BATCH,), generator=g)
    return model, x, y


def _ours(model, x, y, eps, alpha, steps, norm):
    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=alpha, random_start=False)


@pytest.mark.parametrize("eps,alpha,steps", [(8 / 256, 2 / 256, 10), (2 / 256, 1 / 256, 5), (16 / 256, 4 / 256, 7)])
def test_linf_pgd_equals_torchattacks_exactly(model_and_data, eps, alpha, steps):
    model, x, y = model_and_data
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    ours = _ours(model, x, y, eps, alpha, steps, "inf")
    assert torch.equal(ours, theirs)
    assert (ours - x).abs().max() == eps                           # the attack did go to the boundary
    assert not model.training


def test_linf_pgd_matches_torchattacks_at_the_reference_radius(model_and_data):
    """eps 8/255, step 2/255 on inputs off the grid: rounding of x + delta vs x_adv - x may differ in the
    last bit, nothing more."""
    model, _, y = model_and_data
    x = torch.rand(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    torch.testing.assert_close(_ours(model, x, y, 8 / 255, 2 / 255, 10, "inf"), theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eps,alpha,steps", [(0.5, 0.5 / 8, 10), (1.0, 0.25, 5), (16 / 255, 2 / 255, 10)])
def test_l2_pgd_equals_torchattacks_to_float_precision(model_and_data, eps, alpha, steps):
    model, x, y = model_and_data
    theirs = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    ours = _ours(model, x, y, eps, alpha, steps, "l2")
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    norms = (ours - x).flatten(1).norm(dim=1)
    assert norms.max() <= eps * (1 + 1e-5) and norms.max() > 0.5 * eps
    assert ours.min() >= 0 and ours.max() <= 1

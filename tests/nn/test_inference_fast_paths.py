"""Inference fast paths are the same arithmetic: the prepacked oneDNN convolution and the in-place ResBlock."""

import copy

import pytest
import torch

from unclip.nn.conv import Conv2d, prepacked_conv_available
from unclip.nn.resblock import ResBlock

pytestmark = pytest.mark.skipif(not prepacked_conv_available(), reason="this torch build has no oneDNN")


def _channels_last(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0)])
def test_prepacked_conv_equals_nn_conv2d_bit_for_bit(dtype, kernel, stride, padding):
    torch.manual_seed(0)
    conv = Conv2d(16, 24, kernel, stride=stride, padding=padding).to(dtype).eval()
    reference = torch.nn.Conv2d(16, 24, kernel, stride=stride, padding=padding).to(dtype).eval()
    reference.load_state_dict(conv.state_dict())
    with torch.no_grad():
        for shape in [(2, 16, 12, 12), (2, 16, 12, 12), (3, 16, 8, 10)]:  # packed once, reused, repacked
            x = _channels_last(*shape, dtype=dtype)
            fast = conv(x)
            assert conv._packed_key is not None and conv._packed_key[-1] == shape  # the fast path ran
            assert torch.equal(fast, reference(x))
        conv.weight.mul_(2.0)  # an in-place weight update must repack
        reference.weight.mul_(2.0)
        assert torch.equal(conv(x), reference(x))


def test_conv_takes_the_plain_path_for_autograd_and_training():
    conv = Conv2d(4, 4, 3, padding=1)
    x = _channels_last(1, 4, 6, 6).requires_grad_()
    conv(x).sum().backward()  # autograd: nn.Conv2d's path, gradients flow
    assert x.grad is not None and conv.weight.grad is not None and conv._packed_key is None
    with torch.no_grad():
        conv.train()(x)
    assert conv._packed_key is None
    clone = copy.deepcopy(conv.eval())
    with torch.no_grad():
        assert torch.equal(clone(x), conv(x))


@pytest.mark.parametrize("scale_shift,updown", [(True, None), (False, None), (True, "down"), (True, "up")])
def test_inference_resblock_equals_the_autograd_path_and_leaves_its_input(scale_shift, updown):
    torch.manual_seed(0)
    block = ResBlock(32, 48, 64, use_scale_shift_norm=scale_shift, up=updown == "up", down=updown == "down",
                     norm_groups=8).eval()  # fmt: skip
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the zero-initialised out conv would hide the residual's order
    x = _channels_last(2, 32, 8, 8)
    emb = torch.randn(2, 48)
    before = x.clone()
    with torch.enable_grad():
        reference = block(x, emb)
    with torch.no_grad():
        fast = block(x, emb)
    assert torch.equal(x, before)
    assert torch.equal(fast, reference.detach())

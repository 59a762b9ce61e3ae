"""no_weight_init: loaders build networks without random initialisation (and without importing torch._dynamo)."""

import subprocess
import sys

import pytest
import torch

from unclip.models.init import no_weight_init


def test_initialisers_leave_tensors_alone_inside_and_work_again_after():
    t = torch.zeros(4, 4)
    with no_weight_init():
        assert torch.nn.init.normal_(t) is t and torch.nn.init.kaiming_uniform_(t, a=5**0.5) is t
        layer = torch.nn.Linear(3, 3)
        layer.weight.data.zero_()
        layer.reset_parameters()
        assert torch.count_nonzero(layer.weight) == 0
    assert torch.count_nonzero(torch.nn.init.normal_(t)) == 16
    with pytest.raises(RuntimeError), no_weight_init():
        raise RuntimeError("boom")
    assert torch.count_nonzero(torch.nn.init.uniform_(torch.zeros(3))) == 3  # restored after an error too


def test_loading_the_builtin_model_does_not_import_dynamo():
    code = (
        "import sys; from unclip import UnCLIPPipeline; UnCLIPPipeline.from_pretrained('shapes'); "
        "assert 'torch._dynamo' not in sys.modules, 'loading imported torch._dynamo (~1 s of start-up)'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

"""The installed environment: torch and torchvision import together, and so do timm and smp."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Imports the whole stack in a fresh interpreter: the slow lane.
pytestmark = pytest.mark.slow


def test_torchvision_timm_smp_import_together() -> None:
    code = (
        "import torch, torchvision, timm, segmentation_models_pytorch as smp;"
        "from torchvision.ops import nms;"
        "boxes = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]);"
        "assert nms(boxes, torch.tensor([1., .5]), .5).tolist() == [0];"
        "net = smp.Unet('resnet18', encoder_weights=None, classes=1);"
        "print(net(torch.zeros(1, 3, 64, 64)).shape)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 1, 64, 64])" in result.stdout

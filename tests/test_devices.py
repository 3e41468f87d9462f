import pytest
import torch

from ganops.devices import DeviceError, resolve_device


def test_auto_takes_cuda_exactly_when_it_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_explicit_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'cuda:0' but CUDA is not available here"):
        resolve_device("cuda:0")


def test_the_error_names_the_setting_that_asked(monkeypatch):
    # the service resolves GANOPS_DEVICE with the same function: its error must name that, not base.device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="^GANOPS_DEVICE is 'cuda' but CUDA is not available here"):
        resolve_device("cuda", what="GANOPS_DEVICE")
    with pytest.raises(DeviceError, match="^base.device is 'cuda'"):
        resolve_device("cuda")

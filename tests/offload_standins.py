"""CPU stand-ins for offloading to a GPU: the offloaded copy of every weight is unusable (NaN, or on
``meta`` for sequential offload), so any use of a weight that bypasses the offloading hooks shows in the
output or raises, exactly as it would on a GPU where the weight sits in CPU memory.

- model offload: accelerate's ``CpuOffload`` hook (``enable_model_cpu_offload``) poisons a component's
  parameters when it offloads it and restores them in ``pre_forward``;
- group offload: diffusers' ``ModuleGroup`` (``enable_group_offload``) poisons a group when it offloads it;
- sequential offload needs no stand-in: accelerate keeps the weights on ``meta`` outside ``forward``.
"""

from __future__ import annotations

import torch


class Poison:
    """Swaps parameters' data for NaN (``offload``) and back (``onload``)."""

    def __init__(self):
        self.real: dict[torch.nn.Parameter, torch.Tensor] = {}

    def offload(self, params) -> None:
        for p in params:
            if p not in self.real:
                self.real[p] = p.data
                p.data = torch.full_like(p.data, float("nan"))

    def onload(self, params) -> None:
        for p in params:
            if p in self.real:
                p.data = self.real.pop(p)


def poison_model_offload(monkeypatch) -> Poison:
    """``enable_model_cpu_offload`` on the CPU, with offloaded components poisoned."""
    from accelerate.hooks import CpuOffload, UserCpuOffloadHook

    poison = Poison()

    def init_hook(self, module):
        poison.offload(module.parameters())
        return module

    def pre_forward(self, module, *args, **kwargs):
        if isinstance(self.prev_module_hook, UserCpuOffloadHook):
            self.prev_module_hook.offload()
        poison.onload(module.parameters())
        return args, kwargs

    def detach_hook(self, module):
        poison.onload(module.parameters())
        return module

    monkeypatch.setattr(CpuOffload, "init_hook", init_hook)
    monkeypatch.setattr(CpuOffload, "pre_forward", pre_forward)
    monkeypatch.setattr(CpuOffload, "detach_hook", detach_hook, raising=False)
    return poison


def poison_group_offload(monkeypatch) -> Poison:
    """``enable_group_offload`` on the CPU, with offloaded groups poisoned."""
    from diffusers.hooks.group_offloading import ModuleGroup

    poison = Poison()
    onload, offload = ModuleGroup.onload_, ModuleGroup.offload_

    def params(group):
        return [p for m in group.modules for p in m.parameters()] + list(group.parameters)

    def onload_(self):
        poison.onload(params(self))
        onload(self)

    def offload_(self):
        offload(self)
        poison.offload(params(self))

    monkeypatch.setattr(ModuleGroup, "onload_", onload_)
    monkeypatch.setattr(ModuleGroup, "offload_", offload_)
    return poison


def run_sequential_offload_on_plain_cpu(pipe) -> None:
    """diffusers gives accelerate the device ``cpu:0``; on the CPU that makes every onload a copy that
    drops the ``Parameter`` type (a CPU-only artefact, not the adapter's). Execute on ``cpu`` instead."""
    from accelerate.hooks import SequentialHook

    for component in pipe.components.values():
        for module in component.modules() if isinstance(component, torch.nn.Module) else []:
            hook = getattr(module, "_hf_hook", None)
            for h in hook.hooks if isinstance(hook, SequentialHook) else [hook] if hook is not None else []:
                if getattr(h, "execution_device", None) is not None:
                    h.execution_device = torch.device("cpu")

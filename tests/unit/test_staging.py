"""The CPU stager behind asynchronous checkpoints: a copy later updates cannot touch, buffers reused."""

from __future__ import annotations

import torch

from pretrain.train.staging import CpuCopyStager


def state() -> dict:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    norm = torch.ones(4, dtype=torch.bfloat16)
    return {"model": {"embed.weight": weight, "head.weight": weight, "norm.weight": norm},
            "optimizer": {"state": {"embed.weight": {"step": torch.tensor(3.0), "exp_avg": torch.full((3, 4), 0.5)}},
                          "param_groups": [{"lr": 1e-3, "params": ["embed.weight"], "foreach": None}]}}


def test_the_staged_copy_is_independent_of_later_updates_and_keeps_structure_and_aliases():
    stager = CpuCopyStager()
    try:
        source = state()
        staged = stager.stage(source).result()
        source["model"]["embed.weight"].add_(100)
        source["optimizer"]["state"]["embed.weight"]["exp_avg"].zero_()
        source["optimizer"]["param_groups"][0]["lr"] = 5.0
        assert torch.equal(staged["model"]["embed.weight"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
        assert torch.equal(staged["optimizer"]["state"]["embed.weight"]["exp_avg"], torch.full((3, 4), 0.5))
        assert staged["optimizer"]["param_groups"] == [{"lr": 1e-3, "params": ["embed.weight"], "foreach": None}]
        assert staged["model"]["norm.weight"].dtype == torch.bfloat16
        assert staged["model"]["head.weight"] is staged["model"]["embed.weight"]  # tied weights stay one tensor
    finally:
        stager.close()


def test_buffers_are_reused_across_saves_and_replaced_when_a_shape_changes():
    stager = CpuCopyStager()
    try:
        source = state()
        first = stager.stage(source).result()
        pointer = first["model"]["embed.weight"].data_ptr()
        source["model"]["embed.weight"].mul_(2)
        second = stager.stage(source).result()
        assert second["model"]["embed.weight"].data_ptr() == pointer  # no new allocation, no page faults
        assert torch.equal(second["model"]["embed.weight"], source["model"]["embed.weight"])
        source["model"]["norm.weight"] = torch.zeros(8)
        third = stager.stage(source).result()
        assert third["model"]["norm.weight"].shape == (8,) and third["model"]["norm.weight"].dtype == torch.float32
    finally:
        stager.close()

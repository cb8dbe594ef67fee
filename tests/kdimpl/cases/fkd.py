import torch

from kdimpl.adapters.fkd import FKDStudentAdapter, NonLocalBlock2d

from . import LossCase, feature_pair

CHANNELS = 6


def identity_adapters(generator, device, dtype, channels=CHANNELS, pool=2):
    """Adapters whose feature/channel/spatial/relation layers are identities and whose two non-local
    blocks share non-trivial seeded weights, so the loss is exactly zero at student == teacher."""
    dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # the loss computes in float32
    adapter = FKDStudentAdapter(channels, reduction=2, pool=pool)
    teacher_block = NonLocalBlock2d(channels, reduction=2, pool=pool)
    with torch.no_grad():
        for layer in (adapter.feature, adapter.relation):
            layer.weight.copy_(torch.eye(channels)[:, :, None, None])
            layer.bias.zero_()
        adapter.channel.weight.copy_(torch.eye(channels))
        adapter.channel.bias.zero_()
        adapter.spatial.weight.zero_()
        adapter.spatial.weight[0, 0, 1, 1] = 1.0
        adapter.spatial.bias.zero_()
        for p in adapter.non_local.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    teacher_block.load_state_dict(adapter.non_local.state_dict())
    adapter.eval(), teacher_block.eval()  # BatchNorm with fixed statistics
    return adapter.to(device, dtype), teacher_block.to(device, dtype)


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    adapter, teacher_block = identity_adapters(generator, device, dtype, pool=2 if min(height, width) >= 2 else 1)
    return (student, teacher), {"adapter_student": adapter, "non_local_teacher": teacher_block}


CASES = [
    LossCase(
        "fkd",
        _inputs,
        # Weights raised from (7e-5, 4e-3, 4e-3, 7e-5) so every term matters at test magnitudes.
        options={"feature_weight": 1.0, "channel_weight": 1.0, "spatial_weight": 1.0, "non_local_weight": 1.0},
        uses_boxes=False,
        # The attention masks depend on the student but are detached (as in the released code), so
        # finite differences see a term autograd deliberately drops; test_fkd gradchecks the other terms.
        gradcheck=False,
    )
]

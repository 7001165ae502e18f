import torch

from van_focal.core.saved_memory import saved_for_backward


def test_counts_distinct_storages_without_parameters():
    weight = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4, requires_grad=True)

    def forward():
        y = x @ weight            # saves x and weight (a parameter: not counted)
        return (y * y).sum()      # saves y (twice: one storage)

    out, saved = saved_for_backward(forward, [weight])
    assert saved == x.numel() * 4 + 8 * 4 * 4
    out.backward()
    assert weight.grad is not None

import torch

from refine_control.distiller import DenoiserInputs, with_unconditional_pairs


def test_unconditional_pairs_repeat_everything_but_the_prompt():
    inputs = DenoiserInputs(
        sample=torch.randn(3, 4, 2, 2),
        timestep=torch.tensor([5, 500, 900]),
        encoder_hidden_states=torch.randn(3, 7, 8),
        controlnet_cond=torch.rand(3, 3, 8, 8),
        target=torch.randn(3, 4, 2, 2),
        weight=torch.tensor([0.1, 1.0, 1.0]),
    )
    empty = torch.randn(7, 8)
    pairs = with_unconditional_pairs(inputs, empty)
    for name in ("sample", "timestep", "controlnet_cond", "target", "weight"):
        value, original = getattr(pairs, name), getattr(inputs, name)
        assert torch.equal(value[:3], original) and torch.equal(value[3:], original), name
    assert torch.equal(pairs.encoder_hidden_states[:3], inputs.encoder_hidden_states)
    assert all(torch.equal(e, empty) for e in pairs.encoder_hidden_states[3:])

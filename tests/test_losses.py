import pytest
import torch

from refine_control.losses import FeatureLoss, OutputLoss, TaskLoss, TriLevelLoss
from refine_control.models.denoiser import DenoiserOutput


def out(pred, **features):
    return DenoiserOutput(pred, features)


def test_task_loss_is_mse_against_the_true_noise():
    student = out(torch.zeros(2, 4, 3, 3))
    target = torch.full((2, 4, 3, 3), 2.0)
    assert TaskLoss()(student, None, target).item() == pytest.approx(4.0)


def test_task_and_output_terms_weigh_each_sample():
    student = out(torch.zeros(2, 1, 2, 2))
    target = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])  # errors 1 and 9
    weight = torch.tensor([0.5, 2.0])
    assert TaskLoss()(student, None, target, weight).item() == pytest.approx((0.5 * 1 + 2.0 * 9) / 2)
    assert OutputLoss()(student, out(target), target, weight).item() == pytest.approx(9.25)


def test_min_snr_weights_match_the_formula():
    from diffusers import DDPMScheduler

    from refine_control.training.distiller import Conditioner

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    conditioner = Conditioner.__new__(Conditioner)  # only the weighting is under test
    conditioner.noise_scheduler, conditioner.device, conditioner.snr_gamma = scheduler, torch.device("cpu"), 5.0
    t = torch.tensor([0, 100, 999])
    alpha = scheduler.alphas_cumprod[t]
    snr = alpha / (1 - alpha)  # ≈ 9999, 6.8, 4e-5
    eps = conditioner._timestep_weight(t, "epsilon")
    assert torch.allclose(eps, torch.tensor([5 / snr[0], 5 / snr[1], 1.0]))
    assert torch.allclose(
        conditioner._timestep_weight(t, "v_prediction"), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)
    )
    conditioner.snr_gamma = None
    assert torch.equal(conditioner._timestep_weight(t, "epsilon"), torch.ones(3))


def test_output_loss_uses_the_detached_teacher_prediction():
    teacher_pred = torch.ones(1, 4, 2, 2, requires_grad=True)
    student_pred = torch.full((1, 4, 2, 2), 3.0, requires_grad=True)
    loss = OutputLoss()(out(student_pred), out(teacher_pred), torch.zeros(1))
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    assert teacher_pred.grad is None
    assert torch.allclose(student_pred.grad, torch.full_like(student_pred, 2 * 2.0 / 16))


def test_output_loss_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        OutputLoss()(out(torch.zeros(1)), None, torch.zeros(1))


def test_feature_loss_hand_computed_mean_over_taps():
    loss = FeatureLoss({"a": (2, 2), "b": (1, 1)})
    student = out(None, a=torch.zeros(1, 2, 2, 2), b=torch.ones(1, 1, 2, 2))
    teacher = out(None, a=torch.full((1, 2, 2, 2), 3.0), b=torch.ones(1, 1, 2, 2))
    # tap a: mean (0-3)^2 = 9; tap b: 0; mean over taps = 4.5
    assert loss(student, teacher, None).item() == pytest.approx(4.5)


def test_feature_loss_normalisation_divides_by_teacher_mean_square():
    loss = FeatureLoss({"a": (2, 2)}, normalize=True)
    student = out(None, a=torch.zeros(1, 2, 2, 2))
    teacher = out(None, a=torch.full((1, 2, 2, 2), 3.0))
    assert loss(student, teacher, None).item() == pytest.approx(1.0, rel=1e-5)


def test_projectors_map_student_width_to_teacher_width_and_train():
    loss = FeatureLoss({"residual.0.resnet0": (4, 8), "controlnet.mid": (8, 8)})
    proj = loss.projectors["residual__0__resnet0"]
    assert isinstance(proj, torch.nn.Conv2d)
    assert tuple(proj.weight.shape) == (8, 4, 1, 1)
    assert isinstance(loss.projectors["controlnet__mid"], torch.nn.Identity)
    student = out(None, **{"residual.0.resnet0": torch.randn(2, 4, 5, 5), "controlnet.mid": torch.randn(2, 8, 3, 3)})
    teacher = out(None, **{"residual.0.resnet0": torch.randn(2, 8, 5, 5), "controlnet.mid": torch.randn(2, 8, 3, 3)})
    loss(student, teacher, None).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_feature_loss_resizes_a_spatially_mismatched_student_tap():
    loss = FeatureLoss({"a": (1, 1)})
    student = out(None, a=torch.ones(1, 1, 2, 2))
    teacher = out(None, a=torch.ones(1, 1, 4, 4))
    assert loss(student, teacher, None).item() == pytest.approx(0.0)


def test_fusion_weights_and_logged_terms():
    fusion = TriLevelLoss((1.0, 0.5, 2.0), {"a": (1, 1)})
    student = out(torch.zeros(1, 1, 2, 2), a=torch.zeros(1, 1, 2, 2))
    teacher = out(torch.ones(1, 1, 2, 2), a=torch.full((1, 1, 2, 2), 2.0))
    result = fusion(student, teacher, torch.full((1, 1, 2, 2), 3.0))
    assert result.terms["task"].item() == pytest.approx(9.0)
    assert result.terms["output"].item() == pytest.approx(1.0)
    assert result.terms["feature"].item() == pytest.approx(4.0)
    assert result.total.item() == pytest.approx(9.0 + 0.5 + 8.0)
    assert not any(v.requires_grad for v in result.terms.values())
    assert "0.5·L_output" in repr(fusion)


def test_zero_weight_terms_are_not_built_and_scratch_needs_no_teacher():
    scratch = TriLevelLoss((1.0, 0.0, 0.0), {"a": (4, 8)})
    assert list(scratch.terms) == ["task"]
    assert not scratch.needs_teacher
    assert sum(p.numel() for p in scratch.parameters()) == 0
    result = scratch(out(torch.zeros(1, 1, 1, 1)), None, torch.ones(1, 1, 1, 1))
    assert result.total.item() == pytest.approx(1.0)
    assert TriLevelLoss((1.0, 1.0, 0.0), {}).needs_teacher


def test_teacher_terms_score_only_the_selected_samples_at_their_full_batch_share():
    fusion = TriLevelLoss((1.0, 1.0, 1.0), {"a": (1, 1)})
    student = out(torch.zeros(2, 1, 2, 2), a=torch.zeros(2, 1, 2, 2))
    # Sample 0 (unlabelled) would be far off the teacher; sample 1 (replay) is 1 off in output, 2 in features.
    teacher = out(
        torch.stack([torch.full((1, 2, 2), 10.0), torch.ones(1, 2, 2)]),
        a=torch.stack([torch.full((1, 2, 2), 10.0), torch.full((1, 2, 2), 2.0)]),
    )
    target = torch.full((2, 1, 2, 2), 3.0)
    full = fusion(student, teacher, target)
    masked = fusion(student, teacher, target, teacher_samples=torch.tensor([False, True]))
    assert masked.terms["task"].item() == pytest.approx(full.terms["task"].item()) == pytest.approx(9.0)
    # Sample 1's part of the full-batch mean, the unlabelled sample contributing nothing.
    assert masked.terms["output"].item() == pytest.approx(1.0 / 2)
    assert masked.terms["feature"].item() == pytest.approx(4.0 / 2)
    assert full.terms["output"].item() == pytest.approx((100.0 + 1.0) / 2)
    none = fusion(student, teacher, target, teacher_samples=torch.tensor([False, False]))
    assert none.terms["output"].item() == none.terms["feature"].item() == 0.0
    assert none.total.item() == pytest.approx(9.0)

from refine_control.losses.fusion import LossOutput, TriLevelLoss
from refine_control.losses.terms import FeatureLoss, OutputLoss, TaskLoss

__all__ = ["FeatureLoss", "LossOutput", "OutputLoss", "TaskLoss", "TriLevelLoss"]

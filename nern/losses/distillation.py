"""Knowledge distillation: KL(softmax(teacher) ‖ softmax(student)), batch mean, temperature 1.

The student side is taken as log(softmax + 1e-4) for stability (NERN.md §3).
"""

from __future__ import annotations

import torch

STUDENT_EPS = 1e-4


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    p_t = teacher_logits.softmax(dim=1)
    log_p_s = (student_logits.softmax(dim=1) + STUDENT_EPS).log()
    # Σ p_t·(log p_t − log p_s); xlogy makes 0·log 0 = 0.
    kl = torch.special.xlogy(p_t, p_t) - p_t * log_p_s
    return kl.sum() / student_logits.shape[0]

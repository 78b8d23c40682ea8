"""Adversarial attacks as pure functions ``attack(model, images, labels, *, ...)``.

Conventions (DESIGN.md section 1): images are float NCHW in [0, 1], budgets in [0, 1]
units; inputs are never modified; the model's mode and ``requires_grad`` flags are left as
found; device and dtype follow the inputs; untargeted unless ``targets=`` is given; with
``return_info=True`` every attack also returns a dict of per-image tensors (``success``,
``calls`` = forward passes, ``grads`` = gradient computations). All attacks run on the one
loop of :mod:`quantadv.attacks.engine`.
"""

from .apgd import apgd, apgd_t
from .gradient import fgsm, ifgsm, pgd
from .losses import LOSSES, attack_loss
from .minimal import cw, ddn
from .quantized_gradients import daa_blob, pqgd, quantized_gradient
from .search import budget_search
from .square import square
from .temperature import fgsm_pp, njs_temperature, pgd_pp

#: Attacks by name, for configs and the command line.
REGISTRY = {"fgsm": fgsm, "ifgsm": ifgsm, "pgd": pgd, "cw": cw, "ddn": ddn, "pqgd": pqgd, "daa_blob": daa_blob}
REGISTRY.update({"pgd_pp": pgd_pp, "fgsm_pp": fgsm_pp})  # paper 004 (temperature scaling)
REGISTRY.update({"apgd": apgd, "apgd_t": apgd_t, "square": square})  # the evaluation ensemble (Croce & Hein 2020)

__all__ = ["LOSSES", "REGISTRY", "attack_loss", "budget_search", "cw", "daa_blob", "ddn", "fgsm", "ifgsm", "pgd",
           "pqgd", "quantized_gradient"]
__all__ += ["fgsm_pp", "njs_temperature", "pgd_pp"]
__all__ += ["apgd", "apgd_t", "square"]

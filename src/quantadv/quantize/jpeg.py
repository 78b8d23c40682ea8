"""Adversarial JPEG files: Lagrangian quantization in the DCT domain (issue 12, after paper 000 Sec. 4).

A JPEG's pixels are the decoder's output of integer DCT coefficients. Paper 000 quantizes an
adversarial sample ``x_a`` pixel by pixel to ``floor`` or ``ceil``; here the same is done per
DCT coefficient, in units of each coefficient's quantization step:

- ``y_a = DCT(x_a - 128) / T`` (real-valued coefficients of the attack's output; colour in
  YCbCr, chroma averaged over 2x2 / 2x1 pixels for 4:2:0 / 4:2:2, blocks padded as libjpeg
  pads them) and ``y_o`` the same for the original (or the
  original file's integer coefficients when the original is a JPEG). Each coefficient becomes
  ``floor(y_a)`` or ``ceil(y_a)`` (kept where ``y_a`` is an integer within 1e-4).
- Distortion: the DCT is orthonormal, so a coefficient ``c`` costs ``T^2 (c - y_o)^2`` squared
  pixels (times the pixels one chroma sample covers, 4 for 4:2:0 and 2 for 4:2:2, exact
  for replication upsampling, the weight used for the default triangular one too); the
  *distortion choice* (the coefficient-domain Q0, Eq. 20) is the option closer to
  ``y_o``. When ``y_o`` is an integer (a JPEG original) this is exactly paper 000's rule.
- Loss: ``g = dL_Q/dc`` through :func:`quantadv.io.jpeg.decoder_model` at ``y_a`` (Eq. 21-24);
  the *loss choice* (Q-infinity, Eq. 25) is ``ceil`` iff ``g < 0``.
- Eq. 27 per coefficient: ``min T^2 (c - y_o)^2 + lambda g c`` over the two options, i.e.
  ``ceil`` iff ``T^2 (1 - 2 (ceil(y_a) - y_o)) >= lambda g`` (Eq. 28 with the table's weight),
  ratios ``r = T^2 (1 - 2 (ceil(y_a) - y_o)) / g > 0`` on ``J`` (Eq. 29-30).
- ``lambda*`` by the search of :func:`quantadv.quantize.lagrangian` (the same function):
  model-guided by default (Eq. 24 through the decoder model predicts the boundary, the true
  network checks), or the paper's binary search (Sec. 4.5) with ``search="bisection"``; in
  lock-step for the batch; each candidate tested is written as a real JPEG (jpeglib), decoded
  by libjpeg through Pillow and classified. So every success reported is a property of the
  file, not of the model of the decoder.

Baselines: :func:`round_jpeg` (round each coefficient of ``y_a``: the DCT analog of R, Eq. 12)
and :func:`reencode_jpeg` (round the pixels and re-encode with Pillow at the same quality, what
saving a float adversarial image as JPEG does).
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_choice, check_images
from ..digital import is_digital, to_float
from ..errors import DataError, InputError
from ..io import jpeg as jio
from . import _loss
from .lagrangian import SEARCHES, search_candidates

#: ``y_a`` within this distance of an integer (in quantization steps) is kept as it is.
SNAP_TOLERANCE = 1e-4
#: Baseline JPEG coefficients of 8-bit images fit in 11 bits (DC differences in 12).
_COEF_LIMIT = 2047.0


class _Decoded(nn.Module):
    """``model(decoder_model(coefficients) / 255)``: the classifier seen from packed coefficients."""

    def __init__(self, model: nn.Module, tables: torch.Tensor, layout: jio.BlockLayout, dtype: torch.dtype):
        super().__init__()
        self.model, self.tables, self.layout, self.dtype = model, tables, layout, dtype

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        pixels = jio.decoder_model(lay.unpack(coefficients), self.tables, lay.height, lay.width,
                                   subsampling=lay.subsampling)
        return self.model((pixels / 255.0).to(self.dtype))


def _check_inputs(x_orig: torch.Tensor, x_adv: torch.Tensor) -> None:
    check_images(x_orig, "x_orig")
    check_images(x_adv, "x_adv")
    if x_orig.shape != x_adv.shape:
        raise InputError(f"x_orig {tuple(x_orig.shape)} and x_adv {tuple(x_adv.shape)} must have the same shape")
    if x_orig.shape[1] not in (1, 3):
        raise InputError(f"JPEG images have 1 (grayscale) or 3 (RGB) channels, got {x_orig.shape[1]}")
    if not bool(is_digital(x_orig).all()):
        raise InputError("x_orig must be digital (values exactly k/255): load originals as uint8 and "
                         "convert them with quantadv.to_float")


def _originals(
    x_orig: torch.Tensor, quality: int | None, originals: list[jio.JpegCoefficients] | None,
    subsampling: str | None = None,
) -> tuple[list[jio.JpegCoefficients], jio.BlockLayout, torch.Tensor | None]:
    """JPEG templates (tables, size, mode, sampling) per image, their common block layout, and the
    originals' integer coefficients (packed) if given."""
    if originals is not None:
        if quality is not None:
            raise InputError("give either quality= (encode the originals) or originals= (their JPEG files), not both")
        if subsampling is not None:
            raise InputError("subsampling= goes with quality=; originals= keep their own chroma subsampling")
        templates = [o if isinstance(o, jio.JpegCoefficients) else jio.read_coefficients(o) for o in originals]
        if len(templates) != x_orig.shape[0]:
            raise InputError(f"originals has {len(templates)} JPEGs for {x_orig.shape[0]} images")
        for i, t in enumerate(templates):
            try:
                name = t.subsampling
            except DataError as exc:
                raise DataError(f"originals[{i}]: {exc}") from None
            if name != templates[0].subsampling:
                raise InputError(f"originals[{i}] is {name} but originals[0] is {templates[0].subsampling}; "
                                 "one batch = one chroma subsampling: attack them in separate calls")
        decoded = jio.decode(templates).to(x_orig.device)
        if decoded.shape != x_orig.shape or not bool((to_float(decoded).to(x_orig.dtype) == x_orig).all()):
            raise InputError("x_orig must be the decoded originals (quantadv.io.decode(originals)) when "
                             "originals= is given")
        layout = templates[0].layout()
        return templates, layout, layout.pack(jio.stack_components(templates)).to(torch.float64)
    if quality is None:
        raise InputError("lagrangian_jpeg needs quality= (1..100) or originals= (the original JPEG files)")
    templates = [jio.read_coefficients(b) for b in jio.encode(x_orig, quality, subsampling)]
    return templates, templates[0].layout(), None


def _tables(templates: list[jio.JpegCoefficients]) -> torch.Tensor:
    tables = [torch.from_numpy(t.component_tables()) for t in templates]
    first = tables[0]
    if any(not torch.equal(t, first) for t in tables[1:]):
        raise InputError("all originals must share their quantization tables (one batch = one table set)")
    return first


def _write(templates: list[jio.JpegCoefficients], coefficients: torch.Tensor) -> list[bytes]:
    """Each image's packed integer coefficients written as a JPEG file (bytes) with its template's
    tables and sampling."""
    parts = [p.detach().cpu().to(torch.int16).numpy() for p in templates[0].layout().unpack(coefficients)]
    return [t.with_coefficients([p[i] for p in parts]).to_bytes() for i, t in enumerate(templates)]


def _pack_dct(pixels: torch.Tensor, tables: torch.Tensor, layout: jio.BlockLayout) -> torch.Tensor:
    """Real-valued coefficients of ``pixels`` (0..255) in ``layout``, packed ``(B, N, 8, 8)``."""
    return layout.pack(jio.forward_dct_components(pixels, tables, layout.subsampling))


def _decode_float(blobs: list[bytes], like: torch.Tensor) -> torch.Tensor:
    return to_float(jio.decode(blobs)).to(device=like.device, dtype=like.dtype)


def lagrangian_jpeg(
    model: nn.Module,
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    quality: int | None = None,
    subsampling: str | None = None,
    originals: list | None = None,
    targets: torch.Tensor | None = None,
    margin: float = 0.0,
    loss: str = "prob",
    search: str = "model",
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """Q-lambda* in the DCT domain: the least-distortion adversarial JPEG among Lagrangian choices.

    Paper 000's Lagrangian quantization (Eq. 26-30, Sec. 4.4-4.5) over the integer DCT
    coefficients of a baseline JPEG (see :mod:`quantadv.quantize.jpeg` for the rule). The
    candidates ``k = 0 .. |J|`` flip the ``k`` smallest ratios to the loss choice (``k = 0``:
    the coefficient-domain Q0; ``k = |J|``: Q-infinity); ``lambda*`` is searched with the
    *true* network on the *real* decoder's output (libjpeg via Pillow), in lock-step for the
    batch, by the search of :func:`quantadv.quantize.lagrangian`: model-guided (default; the
    first-order model of Eq. 24 in the coefficients predicts the boundary) or ``"bisection"``
    (Q0, then Q-infinity, then bisection). Either way at most ``1 + 2 + ceil(log2 |J|)``
    network calls per image (the gradient counting as one).

    Parameters
    ----------
    model : nn.Module
        Returns logits; used as found.
    x_orig : Tensor
        Digital originals, NCHW in [0, 1], C = 1 or 3 (the reference of the distortion).
    x_adv : Tensor
        The attack's output ``x_a`` (any float image in [0, 1]), same shape.
    labels : Tensor
        True classes.
    quality : int, optional
        IJG quality 1..100: the originals are encoded with Pillow at this quality, whose
        tables the output files keep.
    subsampling : str, optional
        With ``quality``: the chroma subsampling of colour files, ``"4:4:4"``, ``"4:2:2"`` or
        ``"4:2:0"``; default what Pillow writes (4:2:0 at every quality).
    originals : list of bytes or JpegCoefficients, optional
        Instead of ``quality``: the original JPEG files (4:4:4, 4:2:2 or 4:2:0, one kind per
        batch), attacked in place (their tables and sampling, and their integer coefficients
        as ``y_o``); ``x_orig`` must then be their decode.
    targets, margin, loss, search
        As in :func:`quantadv.quantize.lagrangian`.
    return_info : bool
        Also return a dict: per-image tensors ``lambda_star`` (``0`` when Q0 succeeded,
        ``inf`` on failure), ``j_size``, ``success`` (judged on the decoded file), ``calls``,
        ``grads`` (1), ``pred`` (class of the returned image), ``decodes`` (JPEG files written
        and decoded); and ``jpeg``, the list of the files' bytes (write them with
        :func:`quantadv.io.save_jpeg`).

    Returns
    -------
    Tensor or (Tensor, dict)
        The decoded JPEGs (libjpeg), a digital batch with the dtype and device of ``x_adv``.
    """
    _check_inputs(x_orig, x_adv)
    margin_value = _loss.check_margin(margin)
    check_choice(search, "search", SEARCHES)
    batch, device = x_adv.shape[0], x_adv.device
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, batch, device)
    templates, layout, y_orig = _originals(x_orig, quality, originals, subsampling)
    tables = _tables(templates).to(device)
    pixels_adv = (x_adv.detach().to(torch.float64) * 255.0).clamp(0.0, 255.0)
    y_adv = _pack_dct(pixels_adv, tables, layout)
    if y_orig is None:
        y_orig = _pack_dct(x_orig.detach().to(torch.float64) * 255.0, tables, layout)
    y_orig = y_orig.to(device)

    # Gradient of L_Q with respect to the coefficients, at y_a, through the decoder model.
    decoded_model = _Decoded(model, tables, layout, x_adv.dtype)
    grad, objective, loss_at_adv, _ = _loss.gradient_and_loss(
        decoded_model, y_adv.to(x_adv.dtype), labels_t, targets_t, loss, margin_value
    )
    g = (grad * 255.0).flatten(1)  # _loss divides by 255 (pixel units); undo it: dL/dc per step
    ya, yo = y_adv.flatten(1), y_orig.flatten(1)
    block_weight = layout.per_block(tables) ** 2 * layout.pixels_per_sample().to(tables).reshape(-1, 1, 1)
    weight = block_weight.unsqueeze(0).expand_as(y_adv).flatten(1)

    nearest = ya.round()
    exact = (ya - nearest).abs() <= SNAP_TOLERANCE
    ceil = torch.where(exact, nearest, torch.ceil(ya))
    distortion_ceil = (ceil - yo) <= 0.5
    loss_ceil = g < 0
    j_mask = ~exact & (g != 0) & (loss_ceil != distortion_ceil)
    r = weight * (1.0 - 2.0 * (ceil - yo)) / torch.where(j_mask, g, torch.ones_like(g))
    r = torch.where(j_mask, r, torch.full_like(r, float("inf")))
    j_size = j_mask.sum(dim=1)
    r_sorted, order = torch.sort(r, dim=1, stable=True)
    c_zero = torch.where(exact, ceil, torch.where(distortion_ceil, ceil, ceil - 1.0))
    c_inf = torch.where(j_mask, torch.where(loss_ceil, ceil, ceil - 1.0), c_zero)
    c_zero, c_inf = c_zero.clamp(-_COEF_LIMIT, _COEF_LIMIT), c_inf.clamp(-_COEF_LIMIT, _COEF_LIMIT)

    calls = torch.ones(batch, dtype=torch.int64, device=device)
    decodes = torch.zeros(batch, dtype=torch.int64, device=device)
    # The class at the smallest successful candidate tested (what a success returns) and at
    # Q-infinity (what a failure returns), from the search's own passes.
    best_k = torch.full((batch,), -1, dtype=torch.int64, device=device)
    best_pred = torch.full((batch,), -1, dtype=torch.int64, device=device)
    inf_pred = torch.full((batch,), -1, dtype=torch.int64, device=device)

    def lam_at(idx: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        value = r_sorted[idx].gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return torch.where(k > 0, value, torch.zeros_like(value))

    def coefficients(idx: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        flip = r[idx] <= lam.unsqueeze(1)
        return torch.where(flip, c_inf[idx], c_zero[idx]).reshape(idx.numel(), *y_adv.shape[1:])

    @torch.no_grad()
    def test(idx: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write candidate ``k`` of images ``idx`` as JPEGs, decode them (libjpeg), classify."""
        blobs = _write([templates[i] for i in idx.tolist()], coefficients(idx, lam_at(idx, k)))
        logits = model(_decode_float(blobs, x_adv))
        calls[idx] += 1
        decodes[idx] += 1
        chosen = objective.select(idx)
        ok, cls = chosen.success(logits), logits.argmax(dim=1)
        better = ok & ((best_k[idx] < 0) | (k < best_k[idx]))
        best_k[idx[better]] = k[better]
        best_pred[idx[better]] = cls[better]
        at_inf = k == j_size[idx]
        inf_pred[idx[at_inf]] = cls[at_inf]
        return ok, chosen.loss(logits).to(torch.float64)

    linear = None
    if search == "model":
        # Eq. 24 at every candidate: L_Q(y_a) + g^T (c_k - y_a), one cumulative sum along the
        # sorted ratios (candidate k switches the k smallest to the loss choice).
        at_q0 = loss_at_adv + (g * (c_zero - ya)).sum(dim=1)
        steps = (g * (c_inf - c_zero)).gather(1, order)
        linear = torch.cat([at_q0.unsqueeze(1), at_q0.unsqueeze(1) + steps.cumsum(dim=1)], dim=1)
    hi = search_candidates(test, linear, j_size, margin_value, search=search)
    pred = torch.where(hi >= 0, best_pred, inf_pred)
    success = hi >= 0
    everyone = torch.arange(batch, device=device)
    lam_star = torch.where(success, lam_at(everyone, hi.clamp(min=0)), torch.full_like(r_sorted[:, 0], float("inf")))
    final = coefficients(everyone, lam_star)
    blobs = _write(templates, final)
    decodes += 1
    x_q = _decode_float(blobs, x_adv)
    if not return_info:
        return x_q
    info = {
        "lambda_star": lam_star,
        "j_size": j_size,
        "success": success,
        "calls": calls,
        "grads": torch.ones(batch, dtype=torch.int64, device=device),
        "pred": pred,
        "decodes": decodes,
        "jpeg": blobs,
    }
    return x_q, info


def round_jpeg(
    model: nn.Module,
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    quality: int | None = None,
    subsampling: str | None = None,
    originals: list | None = None,
    targets: torch.Tensor | None = None,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """Baseline: round every DCT coefficient of ``x_a`` to the nearest step (the DCT analog of R).

    ``y_a = DCT(x_a - 128) / T`` rounded, written with the originals' tables and sampling
    (``quality``/``subsampling`` or ``originals`` as in :func:`lagrangian_jpeg`) and decoded by
    libjpeg. The model is called once on the decoded image only to report ``success`` and ``pred``.
    """
    return _baseline("round", model, x_orig, x_adv, labels, quality, originals, targets, return_info,
                     subsampling)


def reencode_jpeg(
    model: nn.Module,
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    quality: int = 90,
    subsampling: str | None = None,
    originals: list | None = None,
    targets: torch.Tensor | None = None,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """Baseline: what saving a float adversarial image as JPEG does: round the pixels (R), encode
    with Pillow at ``quality`` and ``subsampling`` (default Pillow's, 4:2:0), decode. With
    ``originals`` (JPEG files), re-encode with their quality tables and chroma subsampling
    instead (Pillow's ``qtables=`` and ``subsampling=``), as re-saving an edited photo does.
    The model is called once to report ``success``/``pred``."""
    if originals is not None and (quality != 90 or subsampling is not None):
        raise InputError("reencode_jpeg: originals= brings its own tables and subsampling; do not pass quality= "
                         "or subsampling= with it")
    return _baseline("reencode", model, x_orig, x_adv, labels, quality, originals, targets, return_info,
                     subsampling)


def _baseline(kind, model, x_orig, x_adv, labels, quality, originals, targets, return_info,  # type: ignore[no-untyped-def]
              subsampling=None):
    _check_inputs(x_orig, x_adv)
    batch, device = x_adv.shape[0], x_adv.device
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, batch, device)
    if kind == "reencode":
        pixels = (x_adv.detach().to(torch.float64) * 255.0).clamp(0.0, 255.0).round().to(torch.uint8)
        if originals is None:
            blobs = jio.encode(pixels.cpu(), jio.check_quality(quality), subsampling)
        else:
            templates, _, _ = _originals(x_orig, None, originals)
            blobs = [jio.encode_like(p, t) for p, t in zip(pixels.cpu(), templates, strict=True)]
    else:
        templates, layout, _ = _originals(x_orig, quality, originals, subsampling)
        tables = _tables(templates).to(device)
        y_adv = _pack_dct((x_adv.detach().to(torch.float64) * 255.0).clamp(0.0, 255.0), tables, layout)
        blobs = _write(templates, y_adv.round().clamp(-_COEF_LIMIT, _COEF_LIMIT))
    x_q = _decode_float(blobs, x_adv)
    if not return_info:
        return x_q
    with torch.no_grad():
        logits = model(x_q)
    from ..eval import adversarial_from_logits

    success = adversarial_from_logits(logits, labels_t, targets_t)
    one = torch.ones(batch, dtype=torch.int64, device=device)
    info = {"success": success, "pred": logits.argmax(dim=1), "calls": one, "grads": one * 0,
            "decodes": one.clone(), "jpeg": blobs}
    return x_q, info


__all__ = ["lagrangian_jpeg", "reencode_jpeg", "round_jpeg"]

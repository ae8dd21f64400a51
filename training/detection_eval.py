"""WBC detection quality against the BCCD boxes and nucleus masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(min_row, min_col, max_row, max_col)`` boxes, ``(len(a), len(b))``."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    r0 = np.maximum(a[:, None, 0], b[None, :, 0])
    c0 = np.maximum(a[:, None, 1], b[None, :, 1])
    r1 = np.minimum(a[:, None, 2], b[None, :, 2])
    c1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(r1 - r0, 0, None) * np.clip(c1 - c0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def match_boxes(pred: np.ndarray, gt: np.ndarray, thr: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU (highest first); pairs ``(pred_idx, gt_idx)``."""
    iou = box_iou(pred, gt)
    pairs = []
    if iou.size == 0:
        return pairs
    used_p, used_g = set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < thr:
            break
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        pairs.append((int(i), int(j)))
    return pairs


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


@dataclass
class DetectionCounts:
    """Running totals for recall/precision/Dice."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    dice_sum: float = 0.0
    n_fields: int = 0

    def add(self, pred_boxes: np.ndarray, gt_boxes: np.ndarray, pred_nuc, gt_nuc) -> None:
        m = len(match_boxes(pred_boxes, gt_boxes))
        self.tp += m
        self.fp += len(pred_boxes) - m
        self.fn += len(gt_boxes) - m
        self.dice_sum += dice(pred_nuc, gt_nuc)
        self.n_fields += 1

    @property
    def recall(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    @property
    def precision(self) -> float:
        return self.tp / max(1, self.tp + self.fp)

    @property
    def mean_dice(self) -> float:
        return self.dice_sum / max(1, self.n_fields)

    def as_dict(self) -> dict:
        return {"fields": self.n_fields, "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "recall": self.recall, "precision": self.precision,
                "nucleus_dice": self.mean_dice}

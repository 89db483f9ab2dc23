"""Cell-level scores as the nucleus-segmentation field reports them (numpy only, no registries).

Two families of scores are in use, and papers compare against the reference scripts rather than
against the formulas, so the conventions below follow those scripts and are written down here.

Panoptic quality (Kirillov et al. 2019, for nuclei: Graham et al. 2019 HoVer-Net; Gamper et al. 2020
PanNuke). A ground-truth object and a predicted object are a *true positive* pair when their IoU is
strictly greater than 0.5 (``get_fast_pq`` in HoVer-Net's ``metrics/stats_utils.py`` and
PanNuke-metrics' ``utils.py``; an IoU of exactly 0.5 is not a match). Per image::

    DQ = TP / (TP + FP/2 + FN/2)      SQ = mean IoU of the TP pairs (0 when TP = 0)      PQ = DQ * SQ

* bPQ (binary): every class merged into one, PQ per image, then the mean over images.
* per-class PQ_c: the class-c ground truth against the class-c predictions only, per image, then
  the mean over all images (PanNuke-metrics prints it over all images, not per tissue). A predicted
  object of the wrong class is therefore an FP of its class *and* leaves an FN in the true class.
* mPQ: per image, the mean of PQ_c over the classes, then the mean over images ("per image over
  classes first", PanNuke-metrics ``run.py``: ``mPQ_each_image = [np.nanmean(pq) for pq in mPQ_all]``).
* An image (for bPQ) or an image-class (for PQ_c) whose ground truth is empty gives NaN and is left
  out of every mean, even when the prediction has objects there: such false positives are not
  counted by PQ (they are by F1_d below).
* PanNuke's published numbers average over images of one tissue, then over the 19 tissues. With a
  ``group`` per image (e.g. the tissue) :func:`summarize_cell_stats` does the same; without, all
  images form one group, which is what HoVer-Net's ``run_nuclei_inst_stat`` does.
* bDQ/bSQ and DQ_c/SQ_c are averaged in the same way (so mean PQ != mean DQ x mean SQ).
* The references divide by ``TP + 1e-6`` for SQ; here SQ is the exact mean (differences < 1e-6).

mPQ+ (CoNIC challenge 2022, TissueImageAnalytics/CoNIC ``compute_stats.py``) is also reported: per
class, TP, FP, FN and the IoU sum are *pooled* over all images before DQ, SQ and PQ are formed, then
PQ is averaged over classes. It counts false positives in images without that class, which mPQ does
not. A class with no TP, FP or FN anywhere is NaN and left out (CoNIC would count it as 0).

Detection and classification F1 (HoVer-Net, Graham et al. 2019; ``run_nuclei_type_stat`` in its
``compute_stats.py`` with ``pair_coordinates`` in ``metrics/stats_utils.py``). Objects are reduced to
centroids; in each image the ground-truth and predicted centroids are paired one-to-one by the
Hungarian algorithm on their Euclidean distances (minimum total distance over all points), and a pair
counts only when its distance is <= ``pair_radius``. HoVer-Net uses 12 px on its 40x data
(about 0.25 um/px), i.e. about 3 um; at uniseg's working resolution of 0.5 um/px, 12 px is 6 um and
the same 3 um is 6 px. Counts are pooled over the whole dataset, then::

    F1_d = 2 TP_d / (2 TP_d + FP_d + FN_d)
    F1_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c)
    Acc_type = paired objects whose classes agree / paired objects

where, among *paired* objects, TP_c = both of class c, FP_c = predicted c but truly another class,
FN_c = truly c but predicted another class; FP_d,c / FN_d,c = unpaired predictions / ground-truth
objects of class c. (HoVer-Net's ``w = [2, 2, 1, 1]``; its ``TN_c`` term is always 0 among the
samples it keeps, so it is left out.) HoVer-Net inserts a dummy object at (0, 0) into an image
without objects; that artefact is not reproduced: an empty image contributes its real counts.

Unknown ground truth (not in the reference scripts, whose datasets have none). Annotations may mark
pixels as unknown (the ignore index of ``masks/``) and objects as *ignored* (all their pixels
unknown, so no class). Ignored objects are not ground truth: they are neither matched nor missed.
A predicted object more than half of whose pixels lie on unknown pixels (ignore-index pixels and
ignored objects) is taken out before matching (:func:`drop_predictions_on_unknown`): it is not
counted as a false positive for finding something nobody annotated, nor as a true positive. Every
other predicted object is scored with all its pixels, so the scores of annotations without unknown
pixels are exactly those of the references.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from uniseg.structures import InstanceMap, instance_properties, relabel_dense

__all__ = [
    "MATCH_IOU", "HOVERNET_PAIR_RADIUS_PX", "IoUMatching", "CellImageStats", "CellSummary",
    "match_instances", "pair_centroids", "image_cell_stats", "summarize_cell_stats", "pq_from_counts",
    "drop_predictions_on_unknown", "UNKNOWN_FRACTION",
]

MATCH_IOU = 0.5
HOVERNET_PAIR_RADIUS_PX = 12.0  # HoVer-Net's compute_stats.py, on 40x (about 0.25 um/px) images: about 3 um
UNKNOWN_FRACTION = 0.5  # a prediction more than half on unknown pixels is not scored


@dataclass(frozen=True)
class IoUMatching:
    """One-to-one pairs of a ground-truth and a predicted :class:`InstanceMap`.

    ``gt`` and ``pred`` are 0-based object indices (id - 1) of the matched pairs, ``iou`` their IoU.
    """

    gt: np.ndarray
    pred: np.ndarray
    iou: np.ndarray
    num_gt: int
    num_pred: int

    @property
    def tp(self) -> int:
        return len(self.gt)

    @property
    def fp(self) -> int:
        return self.num_pred - self.tp

    @property
    def fn(self) -> int:
        return self.num_gt - self.tp


def match_instances(gt_ids: np.ndarray, pred_ids: np.ndarray, num_gt: Optional[int] = None,
                    num_pred: Optional[int] = None, match_iou: float = MATCH_IOU) -> IoUMatching:
    """Pair objects of two id maps whose IoU is strictly greater than ``match_iou`` (>= 0.5).

    No assignment algorithm is needed: within one id map objects are disjoint, and IoU(g, p) > 0.5
    means g and p share more than half of their union, hence more than half of g. Two disjoint
    predictions cannot both cover more than half of g (and two disjoint ground-truth objects cannot
    both cover more than half of p), so every object has at most one partner above the threshold:
    the set of all pairs above it is already one-to-one, and it is the largest such set. Below 0.5
    that argument fails (the references then run Munkres), so lower thresholds are refused.

    The pairwise overlaps come from one ``np.unique`` over the pixels where both maps have an
    object, so the cost is that of the image, not of the number of object pairs.
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"match_instances: ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
    if not MATCH_IOU <= match_iou < 1.0:
        raise ValueError(f"match_instances: match_iou must be in [0.5, 1), got {match_iou} (below 0.5 pairs "
                         "above the threshold are no longer unique)")
    n_gt = int(gt_ids.max(initial=0)) if num_gt is None else int(num_gt)
    n_pred = int(pred_ids.max(initial=0)) if num_pred is None else int(num_pred)
    g = gt_ids.reshape(-1).astype(np.int64)
    p = pred_ids.reshape(-1).astype(np.int64)
    area_gt = np.bincount(g, minlength=n_gt + 1)[1:n_gt + 1]
    area_pred = np.bincount(p, minlength=n_pred + 1)[1:n_pred + 1]
    both = (g > 0) & (p > 0)
    codes, inter = np.unique(g[both] * (n_pred + 1) + p[both], return_counts=True)
    gi = codes // (n_pred + 1) - 1
    pi = codes % (n_pred + 1) - 1
    union = area_gt[gi] + area_pred[pi] - inter
    keep = inter > match_iou * union  # strict: IoU == 0.5 is not a match
    gi, pi = gi[keep], pi[keep]
    iou = inter[keep] / union[keep]
    return IoUMatching(gi, pi, iou.astype(np.float64), n_gt, n_pred)


def pair_centroids(gt_points: np.ndarray, pred_points: np.ndarray,
                   radius: float = HOVERNET_PAIR_RADIUS_PX) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HoVer-Net's unique centroid pairing: Hungarian on all distances, then pairs with distance <= radius.

    Returns ``pairs`` (k, 2) of (gt index, pred index), and the unpaired gt and pred indices.
    The assignment minimises the total distance over *all* points before the radius is applied,
    exactly as ``pair_coordinates`` does; a cardinality-first matching could pair a few more
    points in contrived layouts, but would not give the numbers papers report.
    """
    gt_points = np.asarray(gt_points, np.float64).reshape(-1, 2)
    pred_points = np.asarray(pred_points, np.float64).reshape(-1, 2)
    if radius < 0:
        raise ValueError(f"pair_centroids: radius must be >= 0, got {radius}")
    if len(gt_points) == 0 or len(pred_points) == 0:
        pairs = np.zeros((0, 2), np.int64)
    else:
        dist = cdist(gt_points, pred_points)
        rows, cols = linear_sum_assignment(dist)
        close = dist[rows, cols] <= radius
        pairs = np.stack([rows[close], cols[close]], axis=1).astype(np.int64)
    unpaired_gt = np.setdiff1d(np.arange(len(gt_points)), pairs[:, 0])
    unpaired_pred = np.setdiff1d(np.arange(len(pred_points)), pairs[:, 1])
    return pairs, unpaired_gt, unpaired_pred


@dataclass
class CellImageStats:
    """Everything the dataset scores need from one image: counts and IoU sums, no masks.

    Small and picklable on purpose: mmengine gathers these from every rank.

    Attributes:
        tp, fp, fn: (C,) per-class PQ counts (class-c ground truth against class-c predictions).
        iou_sum: (C,) sum of the IoU of the per-class TP pairs.
        bin_tp, bin_fp, bin_fn, bin_iou_sum: the same with all classes merged.
        paired_types: (C, C) centroid-paired objects counted by (true class, predicted class).
        unpaired_gt, unpaired_pred: (C,) objects left without a centroid partner, by class.
        group: optional label (e.g. the tissue) for PanNuke's average over groups.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou_sum: np.ndarray
    bin_tp: int
    bin_fp: int
    bin_fn: int
    bin_iou_sum: float
    paired_types: np.ndarray
    unpaired_gt: np.ndarray
    unpaired_pred: np.ndarray
    group: Optional[Hashable] = None

    @property
    def num_classes(self) -> int:
        return len(self.tp)

    @property
    def num_gt(self) -> np.ndarray:
        return self.tp + self.fn

    @property
    def num_pred(self) -> np.ndarray:
        return self.tp + self.fp


def _present_objects(instances: InstanceMap) -> Tuple[np.ndarray, np.ndarray]:
    """Id map and labels of the objects that own at least one pixel (the references enumerate pixels)."""
    areas = np.bincount(instances.ids.reshape(-1), minlength=instances.num_instances + 1)[1:]
    if instances.num_instances == 0 or (areas > 0).all():
        return instances.ids, instances.labels
    dense, old = relabel_dense(instances.ids)
    return dense, instances.labels[old - 1]


def drop_predictions_on_unknown(pred: InstanceMap, unknown: Optional[np.ndarray],
                                fraction: float = UNKNOWN_FRACTION) -> InstanceMap:
    """``pred`` without the objects of which more than ``fraction`` of the pixels are unknown (see the
    module docstring); the others keep their order, ids ``1..m``. ``unknown=None``: ``pred`` itself."""
    if unknown is None or pred.num_instances == 0:
        return pred
    unknown = np.asarray(unknown, bool)
    if unknown.shape != pred.ids.shape:
        raise ValueError(f"drop_predictions_on_unknown: unknown-pixel mask {unknown.shape} and prediction "
                         f"{pred.ids.shape} differ in size")
    n = pred.num_instances
    areas = np.bincount(pred.ids.ravel(), minlength=n + 1)[1:]
    on_unknown = np.bincount(pred.ids[unknown], minlength=n + 1)[1:]
    return pred.subset(~(on_unknown > fraction * areas))


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"image_cell_stats: {what} classes must be in [0, {num_classes}), "
                         f"got {sorted(set(labels.tolist()))}")


def image_cell_stats(gt: InstanceMap, pred: InstanceMap, num_classes: int, match_iou: float = MATCH_IOU,
                     pair_radius: float = HOVERNET_PAIR_RADIUS_PX, group: Optional[Hashable] = None) -> CellImageStats:
    """Per-image PQ counts (binary and per class) and centroid-pairing counts.

    The per-class TP pairs are the class-agnostic pairs whose two objects share the class: removing
    objects of other classes changes no pairwise IoU, and above 0.5 a pair's status depends on its
    IoU alone, so one matching serves the binary and every per-class score.
    """
    if num_classes < 1:
        raise ValueError(f"image_cell_stats: num_classes must be >= 1, got {num_classes}")
    gt_ids, gt_labels = _present_objects(gt)
    pred_ids, pred_labels = _present_objects(pred)
    _check_labels(gt_labels, num_classes, "ground-truth")
    _check_labels(pred_labels, num_classes, "predicted")
    n_gt, n_pred = len(gt_labels), len(pred_labels)

    m = match_instances(gt_ids, pred_ids, n_gt, n_pred, match_iou)
    same = gt_labels[m.gt] == pred_labels[m.pred]
    tp = np.bincount(gt_labels[m.gt][same], minlength=num_classes)
    iou_sum = np.bincount(gt_labels[m.gt][same], weights=m.iou[same], minlength=num_classes).astype(np.float64)
    fn = np.bincount(gt_labels, minlength=num_classes) - tp
    fp = np.bincount(pred_labels, minlength=num_classes) - tp

    _, gt_xy = instance_properties(gt_ids, n_gt)
    _, pred_xy = instance_properties(pred_ids, n_pred)
    pairs, unpaired_gt, unpaired_pred = pair_centroids(gt_xy, pred_xy, pair_radius)
    codes = gt_labels[pairs[:, 0]] * num_classes + pred_labels[pairs[:, 1]]
    paired_types = np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)

    return CellImageStats(
        tp=tp.astype(np.int64), fp=fp.astype(np.int64), fn=fn.astype(np.int64), iou_sum=iou_sum,
        bin_tp=m.tp, bin_fp=m.fp, bin_fn=m.fn, bin_iou_sum=float(m.iou.sum()),
        paired_types=paired_types.astype(np.int64),
        unpaired_gt=np.bincount(gt_labels[unpaired_gt], minlength=num_classes).astype(np.int64),
        unpaired_pred=np.bincount(pred_labels[unpaired_pred], minlength=num_classes).astype(np.int64),
        group=group)


def pq_from_counts(tp, fp, fn, iou_sum, empty: str = "gt") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DQ, SQ, PQ from counts (element-wise); NaN where the score is undefined.

    ``empty="gt"``: undefined when there is no ground-truth object (PanNuke's rule);
    ``empty="any"``: undefined only when there is nothing at all (TP = FP = FN = 0; CoNIC's pooling).
    """
    tp, fp, fn, iou_sum = (np.asarray(x, np.float64) for x in (tp, fp, fn, iou_sum))
    undefined = (tp + fn == 0) if empty == "gt" else (tp + fp + fn == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
    dq = np.where(undefined, np.nan, dq)
    sq = np.where(undefined, np.nan, sq)
    return dq, sq, dq * sq


def _nanmean(values: np.ndarray, axis=None) -> np.ndarray:
    """np.nanmean without the 'Mean of empty slice' warning (all-NaN gives NaN)."""
    values = np.asarray(values, np.float64)
    finite = ~np.isnan(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _group_mean(values: np.ndarray, groups: Sequence[Hashable]) -> float:
    """Mean over images within each group, then over groups (NaNs skipped at both levels)."""
    labels = list(groups)
    unique = list(dict.fromkeys(labels))
    if len(unique) <= 1:
        return float(_nanmean(values))
    index = np.array([unique.index(g) for g in labels])
    return float(_nanmean([_nanmean(values[index == k]) for k in range(len(unique))]))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


@dataclass
class CellSummary:
    """Dataset scores in 0..1 (NaN where undefined) and counts; see the module docstring."""

    bpq: float
    bdq: float
    bsq: float
    mpq: float
    mpq_plus: float
    pq: np.ndarray
    dq: np.ndarray
    sq: np.ndarray
    f1_d: float
    acc_type: float
    f1_type: np.ndarray
    num_gt: np.ndarray
    num_pred: np.ndarray
    num_images: int


def summarize_cell_stats(stats: Sequence[CellImageStats]) -> CellSummary:
    """Aggregate per-image statistics into the dataset scores, with the conventions of the module docstring."""
    if not stats:
        raise ValueError("summarize_cell_stats: no images to summarise")
    num_classes = stats[0].num_classes
    if any(s.num_classes != num_classes for s in stats):
        raise ValueError("summarize_cell_stats: images were scored with different numbers of classes")
    groups = [s.group for s in stats]

    def stack(name):
        return np.stack([np.asarray(getattr(s, name)) for s in stats])

    tp, fp, fn, iou_sum = stack("tp"), stack("fp"), stack("fn"), stack("iou_sum")  # (images, C)
    dq_c, sq_c, pq_c = pq_from_counts(tp, fp, fn, iou_sum)
    bdq, bsq, bpq = pq_from_counts(stack("bin_tp"), stack("bin_fp"), stack("bin_fn"), stack("bin_iou_sum"))
    mpq_image = _nanmean(pq_c, axis=1)  # per image over classes first (PanNuke)

    _, _, pq_pooled = pq_from_counts(tp.sum(0), fp.sum(0), fn.sum(0), iou_sum.sum(0), empty="any")

    paired = stack("paired_types").sum(0)  # (C, C): true class x predicted class
    unpaired_gt = stack("unpaired_gt").sum(0)
    unpaired_pred = stack("unpaired_pred").sum(0)
    tp_d = int(paired.sum())
    fp_d, fn_d = int(unpaired_pred.sum()), int(unpaired_gt.sum())
    tp_t = np.diag(paired).astype(np.float64)
    fp_t = paired.sum(0) - np.diag(paired)  # paired, predicted c, truly another class
    fn_t = paired.sum(1) - np.diag(paired)  # paired, truly c, predicted another class
    den = 2 * tp_t + 2 * fp_t + 2 * fn_t + unpaired_pred + unpaired_gt
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_type = np.where(den > 0, 2 * tp_t / np.maximum(den, 1), np.nan)

    return CellSummary(
        bpq=_group_mean(bpq, groups), bdq=_group_mean(bdq, groups), bsq=_group_mean(bsq, groups),
        mpq=_group_mean(mpq_image, groups), mpq_plus=float(_nanmean(pq_pooled)),
        pq=_nanmean(pq_c, axis=0), dq=_nanmean(dq_c, axis=0), sq=_nanmean(sq_c, axis=0),
        f1_d=_ratio(2 * tp_d, 2 * tp_d + fp_d + fn_d), acc_type=_ratio(float(tp_t.sum()), tp_d),
        f1_type=f1_type, num_gt=(tp + fn).sum(0), num_pred=(tp + fp).sum(0), num_images=len(stats))

"""Cell scores (PQ, bPQ/mPQ, HoVer-Net F1) on hand-made cases worked out in the comments, and
cross-checks of the fast code against slow, obviously correct references on random instance maps."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from uniseg.evaluation import (image_cell_stats, match_instances, pair_centroids, semantic_to_instances,
                               summarize_cell_stats)
from uniseg.structures import InstanceMap, relabel_dense


def strip(width, *objects, height=1):
    """InstanceMap of horizontal runs: each object is (first column, last column, class)."""
    ids = np.zeros((height, width), np.int32)
    for k, (first, last, _) in enumerate(objects, start=1):
        ids[:, first:last + 1] = k
    return InstanceMap(ids, [c for _, _, c in objects], np.ones(len(objects)))


def boxes(shape, *objects):
    """InstanceMap of rectangles: each object is (y0, x0, y1, x1, class), end exclusive."""
    ids = np.zeros(shape, np.int32)
    for k, (y0, x0, y1, x1, _) in enumerate(objects, start=1):
        ids[y0:y1, x0:x1] = k
    return InstanceMap(ids, [o[4] for o in objects], np.ones(len(objects)))


def scores(gt, pred, num_classes=1, **kw):
    return summarize_cell_stats([image_cell_stats(gt, pred, num_classes, **kw)])


# ---------------------------------------------------------------- hand-made cases
def test_two_objects_three_predictions():
    # GT A = columns 0..9 (10 px), GT B = 12..19 (8 px).
    # pred a = 0..5 (6 px): A & a = 6, A | a = 10 -> IoU 0.6 > 0.5: TP.
    # pred b = 16..21 (6 px): B & b = 4 (16..19), B | b = 8 + 6 - 4 = 10 -> IoU 0.4: no match.
    # pred c = 24..26 touches nothing: FP.
    # TP = 1, FP = 2 (b, c), FN = 1 (B): DQ = 1 / (1 + 2/2 + 1/2) = 0.4, SQ = 0.6, PQ = 0.24.
    gt = strip(28, (0, 9, 0), (12, 19, 0))
    pred = strip(28, (0, 5, 0), (16, 21, 0), (24, 26, 0))
    m = match_instances(gt.ids, pred.ids)
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.gt.tolist() == [0] and m.pred.tolist() == [0] and m.iou.tolist() == pytest.approx([0.6])
    s = scores(gt, pred)
    assert (s.bdq, s.bsq, s.bpq) == pytest.approx((0.4, 0.6, 0.24))
    assert s.mpq == pytest.approx(0.24) and s.pq.tolist() == pytest.approx([0.24])
    # Centroids (x): A 4.5, B 15.5; a 2.5, b 18.5, c 25. Hungarian: A-a (2) + B-b (3) = 5 is the cheapest;
    # both within 12 px: TP_d = 2, FP_d = 1 (c), FN_d = 0 -> F1_d = 4 / (4 + 1) = 0.8, better than DQ:
    # a centroid pairing does not care that b covers B poorly.
    assert s.f1_d == pytest.approx(0.8)
    assert s.num_gt.tolist() == [2] and s.num_pred.tolist() == [3] and s.num_images == 1


def test_perfect_prediction_scores_one():
    gt = boxes((20, 20), (0, 0, 5, 5, 0), (8, 8, 14, 12, 1), (15, 0, 20, 20, 1))
    s = scores(gt, gt, num_classes=2)
    assert (s.bpq, s.bdq, s.bsq, s.mpq, s.mpq_plus, s.f1_d, s.acc_type) == pytest.approx((1, 1, 1, 1, 1, 1, 1))
    assert s.pq.tolist() == [1, 1] and s.f1_type.tolist() == [1, 1]


def test_empty_prediction_scores_zero():
    gt = strip(20, (0, 4, 0), (10, 14, 0))
    s = scores(gt, InstanceMap.empty(1, 20))
    # TP = 0, FN = 2: DQ = 0 / (0 + 0 + 1) = 0, SQ = 0 (no pair), PQ = 0; F1_d = 0 / (0 + 0 + 2) = 0
    assert (s.bpq, s.bdq, s.bsq, s.mpq, s.f1_d) == (0, 0, 0, 0, 0)


def test_empty_ground_truth_is_nan_and_skipped_by_pq_but_not_by_f1():
    perfect = strip(20, (0, 4, 0), (10, 14, 0))
    empty_gt = InstanceMap.empty(1, 20)
    fp_only = strip(20, (5, 8, 0))
    alone = summarize_cell_stats([image_cell_stats(empty_gt, fp_only, 1)])
    assert math.isnan(alone.bpq) and math.isnan(alone.mpq) and math.isnan(alone.pq[0])
    both = summarize_cell_stats([image_cell_stats(perfect, perfect, 1), image_cell_stats(empty_gt, fp_only, 1)])
    # PQ: the image without ground truth is NaN and left out: bPQ = mPQ = 1 (PanNuke's nanmean).
    assert both.bpq == 1 and both.mpq == 1
    # F1_d pools the counts of every image: TP 2, FP 1, FN 0 -> 4 / 5.
    assert both.f1_d == pytest.approx(0.8)


def test_class_absent_from_an_image_is_skipped_by_mpq_but_counted_by_mpq_plus():
    # class 0: one GT, matched perfectly. class 1: no GT, one predicted object (an FP of class 1).
    gt = strip(20, (0, 4, 0))
    pred = strip(20, (0, 4, 0), (10, 14, 1))
    s = scores(gt, pred, num_classes=2)
    assert s.pq[0] == 1 and math.isnan(s.pq[1])
    assert s.mpq == 1  # per image: nanmean(1, NaN) = 1
    # mPQ+ pools: class 1 has TP 0, FP 1, FN 0 -> DQ 0 -> PQ 0; mean(1, 0) = 0.5
    assert s.mpq_plus == pytest.approx(0.5)
    # binary: TP 1, FP 1: DQ = 1 / 1.5
    assert s.bpq == pytest.approx(2 / 3)


def test_class_confusion_keeps_bpq_but_penalises_mpq_and_type_f1():
    gt = strip(20, (0, 4, 0), (10, 14, 1))
    swapped = strip(20, (0, 4, 1), (10, 14, 0))
    s = scores(gt, swapped, num_classes=2)
    assert s.bpq == 1 and s.f1_d == 1
    # class 0: GT A vs the class-0 prediction (B's shape): no overlap -> TP 0, FP 1, FN 1 -> PQ 0 (same for class 1)
    assert s.pq.tolist() == [0, 0] and s.mpq == 0
    # both objects paired, both misclassified: F1_c = 0 / (0 + 2*1 + 2*1) = 0, Acc_type = 0
    assert s.f1_type.tolist() == [0, 0] and s.acc_type == 0


def test_type_f1_weights_misclassified_pairs_twice_and_unpaired_once():
    # Four GT cells of class 0 (squares far apart), predictions:
    #   cell 1, 2 -> paired, class 0 (TP_c for 0)
    #   cell 3    -> paired, predicted class 1 (FN_c for 0, FP_c for 1)
    #   cell 4    -> missed (FN_d of class 0);  one prediction of class 0 far from any cell (FP_d of class 0)
    # F1_0 = 2*2 / (2*2 + 2*0 + 2*1 + 1 + 1) = 4 / 8 = 0.5;  F1_1 = 0 / (0 + 2*1) = 0
    # F1_d: TP 3, FP 1, FN 1 -> 6 / 8 = 0.75;  Acc_type = 2 / 3
    cells = [(0, 0, 4, 4), (0, 30, 4, 34), (30, 0, 34, 4), (30, 30, 34, 34)]
    gt = boxes((60, 60), *[(*c, 0) for c in cells])
    pred = boxes((60, 60), (*cells[0], 0), (*cells[1], 0), (*cells[2], 1), (50, 50, 54, 54, 0))
    s = scores(gt, pred, num_classes=2)
    assert s.f1_type.tolist() == pytest.approx([0.5, 0.0])
    assert s.f1_d == pytest.approx(0.75) and s.acc_type == pytest.approx(2 / 3)


def test_split_object():
    # GT: one 10 px object; the prediction splits it into 6 px + 4 px:
    # IoU 6/10 = 0.6 (TP) and 4/10 = 0.4 (FP). TP 1, FP 1, FN 0: DQ = 1/1.5 = 2/3, SQ 0.6, PQ 0.4
    s = scores(strip(10, (0, 9, 0)), strip(10, (0, 5, 0), (6, 9, 0)))
    assert (s.bdq, s.bsq, s.bpq) == pytest.approx((2 / 3, 0.6, 0.4))


def test_merged_object():
    # GT: 6 px + 4 px side by side; the prediction merges them into one 10 px object:
    # IoU 0.6 with the first (TP), 0.4 with the second (FN). DQ 2/3, SQ 0.6, PQ 0.4
    s = scores(strip(10, (0, 5, 0), (6, 9, 0)), strip(10, (0, 9, 0)))
    assert (s.bdq, s.bsq, s.bpq) == pytest.approx((2 / 3, 0.6, 0.4))


def test_iou_of_exactly_one_half_is_not_a_match():
    gt = strip(10, (0, 9, 0))
    half = strip(10, (0, 4, 0))       # 5 / 10 = 0.5: not > 0.5 -> TP 0, FP 1, FN 1, PQ 0
    assert scores(gt, half).bpq == 0
    more = strip(10, (0, 5, 0))       # 6 / 10 = 0.6: a match
    assert scores(gt, more).bpq == pytest.approx(0.6)
    # an even split of one object gives two IoUs of exactly 0.5: nothing matches
    s = scores(strip(8, (0, 7, 0)), strip(8, (0, 3, 0), (4, 7, 0)))
    assert s.bpq == 0 and s.bdq == 0


def test_centroid_pairing_radius_is_inclusive():
    gt = InstanceMap(np.pad([[1]], ((0, 0), (0, 20))).astype(np.int32), [0], [1.0])  # one pixel at x = 0
    for x, paired in ((12, True), (13, False)):
        ids = np.zeros((1, 21), np.int32)
        ids[0, x] = 1
        s = scores(gt, InstanceMap(ids, [0], [1.0]), pair_radius=12.0)
        assert s.f1_d == (1.0 if paired else 0.0), x
    pairs, un_gt, un_pred = pair_centroids([[0.0, 0.0]], [[0.0, 12.0]], radius=11.999)
    assert len(pairs) == 0 and un_gt.tolist() == [0] and un_pred.tolist() == [0]


def test_centroid_pairing_is_one_to_one():
    # two GT cells 4 px apart, one prediction between them: only one pair (the nearer GT)
    pairs, un_gt, un_pred = pair_centroids([[0, 0], [0, 4]], [[0, 1]], radius=12)
    assert pairs.tolist() == [[0, 0]] and un_gt.tolist() == [1] and un_pred.tolist() == []


def test_mpq_averages_classes_within_each_image_first():
    # image 1: class 0 perfect (PQ 1), class 1 missed (PQ 0) -> image mPQ 0.5
    # image 2: class 0 perfect, no class 1 in GT (NaN)       -> image mPQ 1
    # mPQ = mean(0.5, 1) = 0.75. Averaging per class over images first would give mean(1, 0) = 0.5.
    img1_gt = strip(20, (0, 4, 0), (10, 14, 1))
    img1_pred = strip(20, (0, 4, 0))
    img2 = strip(20, (0, 4, 0))
    s = summarize_cell_stats([image_cell_stats(img1_gt, img1_pred, 2), image_cell_stats(img2, img2, 2)])
    assert s.mpq == pytest.approx(0.75)
    assert s.pq.tolist() == [1, 0]


def test_groups_are_averaged_like_pannuke_tissues():
    good = strip(10, (0, 4, 0))
    miss = InstanceMap.empty(1, 10)
    stats = [image_cell_stats(good, good, 1, group="breast"), image_cell_stats(good, good, 1, group="breast"),
             image_cell_stats(good, miss, 1, group="colon")]
    # per image 1, 1, 0: over tissues mean(mean(1, 1), 0) = 0.5; without groups 2/3
    assert summarize_cell_stats(stats).bpq == pytest.approx(0.5)
    for s in stats:
        s.group = None
    assert summarize_cell_stats(stats).bpq == pytest.approx(2 / 3)


def test_objects_without_pixels_do_not_count():
    gt = strip(10, (0, 4, 0))
    pred = InstanceMap(gt.ids.copy(), [0, 0], [1.0, 0.9])  # object 2 is described but owns no pixel
    assert scores(gt, pred).bpq == 1


def test_bad_inputs_are_refused():
    gt = strip(10, (0, 4, 0))
    with pytest.raises(ValueError, match="match_iou"):
        match_instances(gt.ids, gt.ids, match_iou=0.3)
    with pytest.raises(ValueError, match="differ in size"):
        match_instances(gt.ids, np.zeros((2, 10), np.int32))
    with pytest.raises(ValueError, match=r"classes must be in \[0, 1\)"):
        image_cell_stats(gt, strip(10, (0, 4, 3)), 1)
    with pytest.raises(ValueError, match="no images"):
        summarize_cell_stats([])


# ---------------------------------------------------------------- semantic baseline
def test_semantic_to_instances_connected_components_per_class():
    sem = np.array([[1, 1, 0, 2, 2],
                    [0, 1, 0, 2, 0],
                    [0, 0, 1, 0, 0],
                    [3, 0, 0, 0, 1]])
    inst = semantic_to_instances(sem, thing_classes=[1, 2], connectivity=1)
    # class value 1 (label 0): {(0,0),(0,1),(1,1)}, {(2,2)} (only diagonal to the first), {(3,4)};
    # value 2 (label 1): one region; value 3 is not a cell class.
    assert inst.num_instances == 4 and inst.labels.tolist() == [0, 0, 0, 1]
    assert (inst.ids[sem == 3] == 0).all() and (inst.ids[sem == 0] == 0).all()
    eight = semantic_to_instances(sem, thing_classes=[1, 2], connectivity=2)
    assert eight.num_instances == 3  # the diagonal pixel joins the first region
    big = semantic_to_instances(sem, thing_classes=[1, 2], min_area=2)
    assert big.labels.tolist() == [0, 1] and (np.bincount(big.ids.ravel())[1:] == [3, 3]).all()
    with pytest.raises(ValueError, match="connectivity"):
        semantic_to_instances(sem, [1], connectivity=4)


def test_touching_cells_merge_under_a_semantic_model():
    # two touching GT cells (6 px + 4 px): the semantic baseline sees one region, an instance model two
    gt = strip(10, (0, 5, 0), (6, 9, 0))
    sem_pred = semantic_to_instances(np.ones((1, 10), int), thing_classes=[1])
    assert sem_pred.num_instances == 1
    assert scores(gt, sem_pred).bpq == pytest.approx(0.4)  # the merged-object case above
    assert scores(gt, gt).bpq == 1


# ---------------------------------------------------------------- slow references on random maps
def random_instances(rng, shape=(40, 40), count=12, num_classes=3):
    ids = np.zeros(shape, np.int64)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(1, count + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(2, 7), rng.uniform(2, 7)
        ids[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k
    dense, old = relabel_dense(ids)
    return InstanceMap(dense, rng.integers(0, num_classes, len(old)), np.ones(len(old)))


def perturb(rng, gt, num_classes=3):
    """A plausible prediction: objects shifted by a pixel or two, some dropped, some relabelled, extras."""
    ids = np.zeros_like(gt.ids, np.int64)
    labels = []
    for k in range(1, gt.num_instances + 1):
        if rng.random() < 0.15:
            continue
        mask = np.roll(gt.ids == k, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        labels.append(gt.labels[k - 1] if rng.random() < 0.7 else rng.integers(0, num_classes))
        ids[mask] = len(labels)
    extra = random_instances(rng, gt.ids.shape, count=3, num_classes=num_classes)
    for k in range(1, extra.num_instances + 1):
        labels.append(extra.labels[k - 1])
        ids[extra.ids == k] = len(labels)
    dense, old = relabel_dense(ids)
    return InstanceMap(dense, np.asarray(labels)[old - 1], np.ones(len(old)))


def slow_pq_counts(gt_ids, pred_ids):
    """TP, FP, FN and IoU sum by looping over every pair of objects (any ids, 0 = none)."""
    gts = [g for g in np.unique(gt_ids) if g]
    preds = [p for p in np.unique(pred_ids) if p]
    pairs = []
    for g in gts:
        for p in preds:
            a, b = gt_ids == g, pred_ids == p
            iou = (a & b).sum() / (a | b).sum()
            if iou > 0.5:
                pairs.append((g, p, iou))
    assert len({g for g, _, _ in pairs}) == len(pairs) == len({p for _, p, _ in pairs})  # unique by construction
    return len(pairs), len(preds) - len(pairs), len(gts) - len(pairs), sum(i for _, _, i in pairs)


def class_channel(inst, c):
    """PanNuke's per-class channel: only the objects of class c."""
    keep = np.concatenate([[False], inst.labels == c])
    return np.where(keep[inst.ids], inst.ids, 0)


def pannuke_pq(gt_ids, pred_ids):
    """PQ of one channel the PanNuke way: NaN when the ground truth is empty."""
    tp, fp, fn, iou = slow_pq_counts(gt_ids, pred_ids)
    if tp + fn == 0:
        return np.nan
    return tp / (tp + fp / 2 + fn / 2) * (iou / tp if tp else 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_fast_counts_match_the_pairwise_loop(seed):
    rng = np.random.default_rng(seed)
    gt = random_instances(rng)
    pred = perturb(rng, gt)
    st = image_cell_stats(gt, pred, 3)
    tp, fp, fn, iou = slow_pq_counts(gt.ids, pred.ids)
    assert (st.bin_tp, st.bin_fp, st.bin_fn) == (tp, fp, fn) and st.bin_iou_sum == pytest.approx(iou)
    for c in range(3):
        tp, fp, fn, iou = slow_pq_counts(class_channel(gt, c), class_channel(pred, c))
        assert (st.tp[c], st.fp[c], st.fn[c]) == (tp, fp, fn) and st.iou_sum[c] == pytest.approx(iou)


def test_dataset_scores_match_the_pannuke_procedure():
    rng = np.random.default_rng(123)
    images = []
    for _ in range(8):
        gt = random_instances(rng, count=int(rng.integers(0, 10)))
        images.append((gt, perturb(rng, gt)))
    s = summarize_cell_stats([image_cell_stats(g, p, 3) for g, p in images])
    bpq = [pannuke_pq(g.ids, p.ids) for g, p in images]
    per_class = np.array([[pannuke_pq(class_channel(g, c), class_channel(p, c)) for c in range(3)]
                          for g, p in images])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN row: an image without cells
        mpq = np.nanmean([np.nanmean(row) for row in per_class])
        pq = np.nanmean(per_class, axis=0)
    assert s.bpq == pytest.approx(np.nanmean(bpq))
    assert s.mpq == pytest.approx(mpq)
    assert s.pq == pytest.approx(pq, nan_ok=True)
    assert 0 < s.bpq < 1 and 0 < s.mpq < 1  # the random cases have matches and errors


def test_hungarian_pairing_matches_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(40):
        a = rng.uniform(0, 30, (int(rng.integers(0, 5)), 2))
        b = rng.uniform(0, 30, (int(rng.integers(0, 5)), 2))
        pairs, _, _ = pair_centroids(a, b, radius=10)
        # brute force: the assignment of min(len) points with the least total distance, then the radius
        best, best_cost = [], np.inf
        small, large, flip = (a, b, False) if len(a) <= len(b) else (b, a, True)
        for perm in itertools.permutations(range(len(large)), len(small)):
            cost = sum(np.linalg.norm(small[i] - large[j]) for i, j in enumerate(perm))
            if cost < best_cost - 1e-9:
                best, best_cost = list(enumerate(perm)), cost
        expect = sorted((j, i) if flip else (i, j) for i, j in best
                        if np.linalg.norm(small[i] - large[j]) <= 10)
        assert sorted(map(tuple, pairs.tolist())) == expect

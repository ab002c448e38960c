"""Mask2Former inference: semantic, panoptic and instance results against transformers'
``Mask2FormerImageProcessor`` where the two definitions agree, panoptic against a line-by-line loop of
detectron2's procedure on fuzzed inputs (hypothesis), and hand cases.

Where transformers differs from detectron2 (our reference):

* panoptic: it counts a query's own area on ``score * sigmoid >= 0.5`` (detectron2: ``sigmoid >= 0.5``),
  gives a segment every pixel it wins even where its mask probability is below 0.5 (detectron2: void),
  keeps a segment only when the area ratio is ``> overlap`` (detectron2: ``>= overlap``), repeats the
  ``segments_info`` entry of a fused stuff class once per query, and after a fused query continues
  numbering from the fused id (so ids can repeat); ``label_ids_to_fuse`` plays detectron2's "not a thing".
* instance: it drops masks that are empty or score below ``threshold``; detectron2 keeps all top-k.
* both resize the masks to 384x384 first (we give them 384x384 logits, which makes that a no-op).
"""

import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from focalnet.segmentation.mask2former.postprocess import (
    instance_inference,
    panoptic_inference,
    panoptic_maps,
    resize_mask_logits,
    semantic_inference,
)

S = 384  # transformers' processor resizes the masks to 384x384 before anything else


@pytest.fixture(scope="module")
def processor():
    tf = pytest.importorskip("transformers")
    return tf.Mask2FormerImageProcessor()


def _outputs(cls: torch.Tensor, masks: torch.Tensor):
    return types.SimpleNamespace(class_queries_logits=cls[None], masks_queries_logits=masks[None])


def test_semantic_equals_transformers(processor, one_thread):
    g = torch.Generator().manual_seed(0)
    cls, masks = torch.randn(9, 7, generator=g) * 3, torch.randn(9, S, S, generator=g) * 4
    theirs = processor.post_process_semantic_segmentation(_outputs(cls, masks), return_segmentation_scores=True)[0]
    ours = semantic_inference(cls, masks)
    assert ours.shape == (6, S, S)
    assert torch.allclose(ours, theirs.segmentation_scores, atol=1e-6)
    assert torch.equal(ours.argmax(0), theirs.segmentation)


def test_instance_equals_transformers(processor, one_thread):
    g = torch.Generator().manual_seed(1)
    q, k = 8, 5
    cls, masks = torch.randn(q, k + 1, generator=g) * 3, torch.randn(q, S, S, generator=g) * 4
    masks[3] = -5.0  # an empty mask: detectron2 keeps the pair (mask score 0), transformers drops it
    theirs = processor.post_process_instance_segmentation(_outputs(cls, masks), threshold=0.0, return_binary_maps=True)[
        0
    ]
    ours = instance_inference(cls, masks)
    assert ours["masks"].shape == (q, S, S) and ours["labels"].dtype == torch.int64
    non_empty = ours["masks"].flatten(1).any(1)
    assert int((~non_empty).sum()) >= 1 and torch.all(ours["scores"][~non_empty] == 0)
    got = sorted(zip(ours["scores"][non_empty].tolist(), ours["labels"][non_empty].tolist()))
    expected = sorted((s["score"], s["label_id"]) for s in theirs["segments_info"])
    assert len(got) == len(expected)
    for (s, lab), (s2, lab2) in zip(got, expected):
        assert lab == lab2 and s == pytest.approx(s2, abs=1e-6)  # theirs rounded to 6 digits
    # the masks, in transformers' order (the same top-k order)
    order = [int(i) for i in ours["scores"].argsort(descending=True) if non_empty[i]]
    theirs_order = sorted(range(len(expected)), key=lambda i: -theirs["segments_info"][i]["score"])
    for i, j in zip(order, theirs_order):
        assert torch.equal(ours["masks"][i].float(), theirs["segmentation"][j])
    # boxes are the masks' pixel edges
    i = order[0]
    ys, xs = torch.nonzero(ours["masks"][i], as_tuple=True)
    assert ours["boxes"][i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert ours["boxes"][~non_empty].abs().sum() == 0
    # with thing ids, pairs of other classes leave after the top-k
    things = instance_inference(cls, masks, topk=5, thing_ids={0, 2})
    assert set(things["labels"].tolist()) <= {0, 2} and len(things["labels"]) <= 5
    with pytest.raises(ValueError, match="thing_ids"):
        instance_inference(cls, masks, thing_ids={k})


def test_panoptic_equals_transformers_where_definitions_agree(processor, one_thread):
    """Inputs on which both definitions coincide: every pixel lies in at least one confidently kept query's
    mask (logit +6, elsewhere -6, noise +-0.05), so no pixel is won by a query below 0.5 and ``score * p``
    and ``p`` fall on the same side of 0.5; each stuff class appears at most once among the kept queries.
    The kept queries' scores differ, so the more confident query wins a pixel where masks overlap."""
    g = torch.Generator().manual_seed(2)
    q, k, cells = 10, 6, 12
    labels = torch.tensor([0, 1, 2, 0, 4, 5, 1, 3, 0, 2])  # thing classes {0, 1, 2}; stuff 3, 4, 5 once each
    kept = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    cls = torch.full((q, k + 1), -4.0)
    cls[torch.arange(q), labels] = torch.where(kept, 3.0 + 0.4 * torch.arange(q), -3.5)  # dropped: p = 0.2 ...
    cls[8, k] = 9.0  # ... or "no object"
    owner = torch.randint(0, q, (cells, cells), generator=g)
    owner = torch.nonzero(kept).flatten()[owner % int(kept.sum())]
    cover = torch.nn.functional.one_hot(owner, q).permute(2, 0, 1).bool()
    cover |= torch.rand(q, cells, cells, generator=g) < 0.05  # overlaps: some queries lose pixels
    up = cover.repeat_interleave(S // cells, 1).repeat_interleave(S // cells, 2)
    masks = torch.where(up, 6.0, -6.0) + torch.rand(q, S, S, generator=g) * 0.1 - 0.05

    stuff = {3, 4, 5}
    theirs = processor.post_process_panoptic_segmentation(
        _outputs(cls, masks), threshold=0.8, overlap_mask_area_threshold=0.8, label_ids_to_fuse=stuff
    )[0]
    seg, info = panoptic_inference(cls, masks, thing_ids={0, 1, 2})
    assert seg.dtype == torch.int32 and torch.equal(seg, theirs["segmentation"])
    assert [(s["id"], s["category_id"]) for s in info] == [(s["id"], s["label_id"]) for s in theirs["segments_info"]]
    assert [s["score"] for s in info] == pytest.approx([s["score"] for s in theirs["segments_info"]], abs=1e-6)
    assert [s["isthing"] for s in info] == [s["category_id"] not in stuff for s in info]
    assert [s["area"] for s in info] == [int((seg == s["id"]).sum()) for s in info]
    assert 3 <= len(info) < int(kept.sum())  # some kept queries were dropped by the overlap check


def _detectron2_panoptic(cls, masks, thing_ids, object_mask_threshold, overlap_threshold):
    """detectron2's ``panoptic_inference``, loop for loop (the reference the tensor version must equal)."""
    scores, labels = cls.softmax(-1).max(-1)
    probs = masks.sigmoid()
    keep = labels.ne(cls.shape[-1] - 1) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], probs[keep]
    seg = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    info = []
    if cur_masks.shape[0] == 0:
        return seg, info
    ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_memory, current = {}, 0
    for k in range(cur_classes.shape[0]):
        c = int(cur_classes[k])
        isthing = c in thing_ids
        mask_area = int((ids == k).sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = (ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if c in stuff_memory:
                    seg[mask] = stuff_memory[c]
                    continue
                stuff_memory[c] = current + 1
            current += 1
            seg[mask] = current
            info.append({"id": current, "isthing": isthing, "category_id": c})
    return seg, info


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    q=st.integers(1, 6),
    k=st.integers(1, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    things=st.sets(st.integers(0, 2)),
    object_mask_threshold=st.sampled_from([0.0, 0.3, 0.8]),
    overlap_threshold=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
)
def test_panoptic_equals_detectron2_procedure(seed, q, k, h, w, things, object_mask_threshold, overlap_threshold):
    """Logits from a few values, so that ties, probabilities of exactly 0.5, repeated classes, queries that
    win only pixels below 0.5 and area ratios on the threshold all occur."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda values, shape: torch.tensor(values)[torch.randint(len(values), shape, generator=g)]  # noqa: E731
    cls, masks = pick([-3.0, 0.0, 1.0, 4.0], (q, k + 1)), pick([-2.0, 0.0, 0.5, 3.0], (q, h, w))
    things = {c for c in things if c < k}
    expected_seg, expected = _detectron2_panoptic(cls, masks, things, object_mask_threshold, overlap_threshold)
    seg, info = panoptic_inference(cls, masks, things, object_mask_threshold, overlap_threshold)
    assert torch.equal(seg, expected_seg)
    assert [{k: s[k] for k in ("id", "isthing", "category_id")} for s in info] == expected
    assert [s["area"] for s in info] == [int((seg == s["id"]).sum()) for s in info]


def _panoptic_case(class_of_query, score_logit, masks, num_classes=4):
    cls = torch.full((len(class_of_query), num_classes + 1), -5.0)
    for i, (c, s) in enumerate(zip(class_of_query, score_logit)):
        cls[i, c] = s
    return cls, masks


def test_panoptic_hand_cases():
    hi, lo = 8.0, -8.0
    # stuff merged per class: queries 0 and 2 both predict stuff class 3 (left, right); 1 a thing (middle)
    masks = torch.full((3, 2, 6), lo)
    masks[0, :, :2], masks[1, :, 2:4], masks[2, :, 4:] = hi, hi, hi
    cls, masks = _panoptic_case([3, 1, 3], [9.0] * 3, masks)
    seg, info = panoptic_inference(cls, masks, thing_ids={0, 1})
    assert seg.tolist() == [[1, 1, 2, 2, 1, 1]] * 2
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in info] == [(1, 3, False, 8), (2, 1, True, 4)]
    # two things of one class stay two segments
    seg, info = panoptic_inference(cls, masks, thing_ids={1, 3})
    assert seg.tolist() == [[1, 1, 2, 2, 3, 3]] * 2 and len(info) == 3

    # overlap threshold: query 1's mask (4 px) is 3/4 covered by the more confident query 0: it keeps 1
    # pixel of 4 (ratio 0.25) and is dropped at 0.8, kept at 0.2
    masks = torch.full((2, 1, 6), lo)
    masks[0, 0, :4], masks[1, 0, 1:5] = hi, hi
    cls, masks = _panoptic_case([0, 1], [12.0, 9.0], masks)
    seg, info = panoptic_inference(cls, masks, thing_ids={0, 1})
    assert seg.tolist() == [[1, 1, 1, 1, 0, 0]] and [s["category_id"] for s in info] == [0]
    seg, info = panoptic_inference(cls, masks, thing_ids={0, 1}, overlap_threshold=0.2)
    assert seg.tolist() == [[1, 1, 1, 1, 2, 0]] and [s["area"] for s in info] == [4, 1]
    # a ratio exactly at the threshold is kept (detectron2 drops only "< overlap")
    seg, info = panoptic_inference(cls, masks, thing_ids={0, 1}, overlap_threshold=0.25)
    assert len(info) == 2
    # a query that wins only pixels where its own mask is below 0.5 is no segment (and takes no id)
    cls, masks = _panoptic_case([0, 1], [12.0, 9.0], torch.tensor([[[3.0, -2.0, -3.0]], [[3.0, -3.0, -2.0]]]))
    seg, info = panoptic_inference(cls, masks, thing_ids={0, 1}, overlap_threshold=0.0)
    assert seg.tolist() == [[1, 0, 0]] and [s["category_id"] for s in info] == [0]

    # object-mask threshold: a query whose best class probability is <= 0.8, or whose best is "no
    # object", is no segment; a lower threshold admits the first
    masks = torch.full((2, 1, 4), lo)
    masks[0, 0, :2], masks[1, 0, 2:] = hi, hi
    cls, masks = _panoptic_case([2, 4], [-4.0, 9.0], masks)  # query 0: p = 0.40; query 1: "no object" (4)
    seg, info = panoptic_inference(cls, masks)
    assert info == [] and seg.tolist() == [[0, 0, 0, 0]]
    seg, info = panoptic_inference(cls, masks, object_mask_threshold=0.3)
    assert seg.tolist() == [[1, 1, 0, 0]] and info[0]["score"] == pytest.approx(cls[0].softmax(-1).max().item())

    # the empty result: an empty mask is no segment either
    seg, info = panoptic_inference(*_panoptic_case([1], [9.0], torch.full((1, 3, 3), lo)))
    assert info == [] and seg.shape == (3, 3) and not seg.any()
    with pytest.raises(ValueError, match="thing_ids"):
        panoptic_inference(cls, masks, thing_ids={4})


def test_resize_mask_logits_crops_the_padding_after_upsampling():
    g = torch.Generator().manual_seed(3)
    small = torch.randn(2, 3, 8, 6, generator=g)  # [B, Q, H/4, W/4] of a 32x24 padded batch
    up = torch.nn.functional.interpolate(small, size=(32, 24), mode="bilinear", align_corners=False)
    out = resize_mask_logits(small, (32, 24), (30, 17))
    assert out.shape == (2, 3, 30, 17) and torch.allclose(out, up[..., :30, :17])
    out = resize_mask_logits(small[0], (32, 24), (30, 17), (60, 34))
    assert out.shape == (3, 60, 34)
    assert torch.allclose(out.mean((1, 2)), up[0, :, :30, :17].mean((1, 2)), atol=0.05)
    const = resize_mask_logits(torch.full((1, 4, 4), 2.5), (16, 16), (13, 9), (100, 70))
    assert torch.allclose(const, torch.full((1, 100, 70), 2.5))


class _Wrapped(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, cls, masks):
        return self.fn(cls, masks)


def test_the_tensor_functions_trace_to_onnx_with_dynamic_sizes(tmp_path, one_thread):
    """semantic_inference, panoptic_maps and instance_inference (without boxes) exported once (8 queries,
    20x24) give the PyTorch results on ONNX Runtime for another query count and size."""
    import warnings

    ort = pytest.importorskip("onnxruntime")
    is_thing = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    functions = {
        "semantic": lambda c, m: semantic_inference(c, m),
        "panoptic": lambda c, m: panoptic_maps(c, m, is_thing),
        "instance": lambda c, m: tuple(instance_inference(c, m, boxes=False).values()),
    }
    g = torch.Generator().manual_seed(5)

    def inputs(q, h, w):
        cls = torch.randn(q, 7, generator=g) * 3
        cls[: q // 2, :6] += torch.eye(q // 2, 6) * 8  # some confident queries, so that segments exist
        return cls, torch.randn(q, h, w, generator=g) * 3

    for name, fn in functions.items():
        module = _Wrapped(fn)
        path = tmp_path / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs(8, 20, 24), str(path), dynamo=False, input_names=["c", "m"],
                              opset_version=17, dynamic_axes={"c": {0: "q"}, "m": {0: "q", 1: "h", 2: "w"}})  # fmt: skip
        cls, masks = inputs(12, 33, 17)
        expected = fn(cls, masks)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = ort.InferenceSession(str(path)).run(None, {"c": cls.numpy(), "m": masks.numpy()})
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.shape == tuple(b.shape) and torch.allclose(torch.from_numpy(a).to(b.dtype), b, atol=1e-5), name

"""Packing invariants on synthetic samples (pure numpy: no Ray, no tokenizer)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mm1.data.packing import PackSpec, expand, pack

PAD, BOS, EOS, IMG = 0, 1, 2, 3
SPEC = PackSpec(seq_len=64, max_images=3, image_tokens=5, image_token_id=IMG, pad_id=PAD)


def make_sample(rng: np.random.Generator, index: int) -> tuple[list[int], list[int], list[bytes]]:
    """<s> text/image pieces </s>; text ids >= 10 encode the sample index so documents are recognisable."""
    ids, labels, images = [BOS], [-100], []
    for _ in range(int(rng.integers(1, 6))):
        if rng.random() < 0.4:
            ids.append(IMG)
            labels.append(-100)
            images.append(f"s{index}-i{len(images)}".encode())
        else:
            text = [10 + index] * int(rng.integers(1, 12))
            ids += text
            labels += text
    return ids + [EOS], labels + [EOS], images


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    raw = [make_sample(rng, i) for i in range(400)]
    raw.append(([BOS] + [IMG] * 5 + [EOS], [-100] * 6 + [EOS], [b"many-%d" % k for k in range(5)]))
    raw.append(([BOS] + [900] * 100 + [EOS], [-100] + [900] * 100 + [EOS], []))
    return raw


def documents(row) -> list[tuple[int, int]]:
    """(start, end) of each document in a packed row, found from position_ids restarting at 0."""
    n = row.num_tokens
    starts = [i for i in range(n) if row.position_ids[i] == 0]
    return list(zip(starts, starts[1:] + [n], strict=True))


def test_packing_invariants(samples):
    expanded = [expand(np.array(i), np.array(lab), im, SPEC) for i, lab, im in samples]
    rows = list(pack(expanded, SPEC))
    seen: Counter = Counter()
    for row in rows:
        n = row.num_tokens
        for array in (row.input_ids, row.labels, row.position_ids):
            assert array.shape == (SPEC.seq_len,) and array.dtype == np.int32
        assert 0 < n <= SPEC.seq_len
        assert len(row.images) <= SPEC.max_images
        is_image = row.input_ids == IMG
        assert is_image.sum() == len(row.images) * SPEC.image_tokens
        assert (row.labels[is_image] == -100).all()  # no loss on image tokens
        assert (row.input_ids[n:] == PAD).all() and (row.labels[n:] == -100).all()  # nor on padding
        assert (row.position_ids[n:] == np.arange(SPEC.seq_len - n)).all()
        docs = documents(row)
        assert len(docs) == row.num_samples
        images = iter(row.images)
        for start, end in docs:
            assert row.input_ids[start] == BOS and row.labels[start] == -100  # no loss across documents
            assert (row.position_ids[start:end] == np.arange(end - start)).all()
            doc_images = tuple(next(images) for _ in range((row.input_ids[start:end] == IMG).sum() // 5))
            seen[(tuple(row.input_ids[start:end]), doc_images)] += 1
    # every sample appears exactly once (as expanded/truncated), with its own images in order
    wanted = Counter((tuple(s.input_ids), tuple(s.images)) for s in expanded)
    assert seen == wanted


def test_image_runs_are_expanded_in_place():
    ids = np.array([BOS, 11, IMG, 12, IMG, EOS])
    labels = np.array([-100, 11, -100, 12, -100, EOS])
    s = expand(ids, labels, [b"a", b"b"], SPEC)
    assert s.input_ids.tolist() == [BOS, 11] + [IMG] * 5 + [12] + [IMG] * 5 + [EOS]
    assert s.labels.tolist() == [-100, 11] + [-100] * 5 + [12] + [-100] * 5 + [EOS]
    assert s.images == [b"a", b"b"] and not s.truncated


def test_long_samples_are_truncated_never_inside_an_image():
    # 60 text tokens then an image: 61 + 5 > 64, so the cut moves back to just before the image
    ids = np.array([BOS] + [20] * 59 + [IMG] + [21] * 10 + [EOS])
    s = expand(ids, ids.copy(), [b"x"], SPEC)
    assert s.truncated and len(s.input_ids) == 60 and s.images == [] and IMG not in s.input_ids
    # text only: plain cut at seq_len
    ids = np.array([BOS] + [20] * 100 + [EOS])
    s = expand(ids, ids.copy(), [], SPEC)
    assert s.truncated and len(s.input_ids) == SPEC.seq_len


def test_more_than_max_images_are_cut_before_the_first_extra_image():
    ids = np.array([BOS] + [IMG, 30] * 5 + [EOS])
    s = expand(ids, ids.copy(), [b"0", b"1", b"2", b"3", b"4"], SPEC)
    assert s.images == [b"0", b"1", b"2"]
    assert s.input_ids.tolist() == [BOS] + ([IMG] * 5 + [30]) * 3


def test_rows_respect_the_image_budget():
    many = [expand(np.array([BOS, IMG, EOS]), np.array([-100, -100, EOS]), [b"i"], SPEC) for _ in range(10)]
    rows = list(pack(many, SPEC))
    assert [len(r.images) for r in rows] == [3, 3, 3, 1]


def test_mismatched_images_and_tokens_fail_loudly():
    with pytest.raises(ValueError, match="image tokens"):
        expand(np.array([BOS, IMG, EOS]), np.array([-100, -100, EOS]), [], SPEC)


def test_seq_len_must_hold_one_image():
    with pytest.raises(ValueError, match="seq_len"):
        PackSpec(seq_len=16, max_images=2, image_tokens=16, image_token_id=IMG, pad_id=PAD).check()

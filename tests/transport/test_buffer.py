"""The shared buffer's wake rules: a full batch wakes the sender once; a dozing sender wakes on any write."""

from __future__ import annotations

from array import array

from coordinator.transport.buffer import Buffer, Frame


def _buffer() -> tuple[Buffer, list[int]]:
    woken: list[int] = []
    b = Buffer(max_points=1000)
    b.wake_at(100, lambda: woken.append(1))
    return b, woken


def test_doze_refuses_while_anything_is_buffered() -> None:
    b, _ = _buffer()
    b.pending = 1
    assert not b.doze() and not b.dozing
    b.pending = 0
    b.fields.append(("a", ("int", 1)))
    assert not b.doze() and not b.dozing
    b.fields.clear()
    b.flush_requested = True
    assert not b.doze()
    b.flush_requested = False
    assert b.doze() and b.dozing


def test_the_first_point_after_a_doze_wakes_the_sender_once_and_keeps_the_volume_mark() -> None:
    """The waking write starts the sender's flush interval (no flush asked for); a full batch still wakes it."""
    b, woken = _buffer()
    assert b.doze()
    with b.lock:  # what log() and append() do before they add a point
        assert b.pending >= b.mark
        assert not b.past_mark()  # not full: the call goes on
        b.pending += 1
    assert woken == [1] and not b.flush_requested and not b.dozing and b.mark == 100
    with b.lock:
        assert b.pending < b.mark  # the next calls compare and go on: no second wake-up
        b.pending = 100
        assert b.pending >= b.mark and not b.past_mark()  # a full batch: woken again, flush asked for
    assert woken == [1, 1] and b.flush_requested


def test_a_field_or_text_write_wakes_a_dozing_sender_only() -> None:
    b, woken = _buffer()
    with b.lock:
        b.add_fields([("a", ("int", 1))])
    assert woken == [] and b.fields == [("a", ("int", 1))]  # not dozing: the flush timer takes it
    b.cut({})
    assert b.doze()
    with b.lock:
        b.add_fields([("b", ("int", 2))])
    assert woken == [1] and not b.dozing


def test_a_cut_ends_the_doze() -> None:
    b, woken = _buffer()
    assert b.doze()
    b.cut({"k": (array("q"), array("d"))})
    assert not b.dozing and b.mark == 100 and woken == []


def test_a_cut_hands_over_no_dict_the_training_thread_goes_on_writing() -> None:
    """A generation without frames or texts: what the cut returns is not the buffer's live dicts.

    The sender encodes the cut after releasing the lock (and the GIL, between slices); a frame or
    text the training thread opens meanwhile belongs to the next generation, not to both.
    """
    b = Buffer(max_points=1000)
    _, _, frames, _, texts = b.cut({})
    with b.lock:  # as the hot path opens a frame and a text series (client/hotpath.py, client/texts.py)
        b.frames[("a", "b")] = fr = Frame(("a", "b"))
        b.framed.update(dict.fromkeys(("a", "b"), fr))
        fr.steps.append(0)
        fr.values.extend([1.0, 2.0])
        b.texts["t"] = (array("q", [0]), ["x"])
    assert frames == {} and texts == {}
    _, _, frames2, _, texts2 = b.cut({})
    assert list(frames2) == [("a", "b")] and list(texts2) == ["t"]

"""SharedContext holds process-wide resources by typed key; each key brings its own close hook."""

from exporter.sources.base import ResourceKey, SharedContext


def test_resources_are_created_once_and_closed_newest_first_by_their_own_hooks():
    closed = []
    first = ResourceKey[list]("first", lambda value: closed.append(("first", value)))
    second = ResourceKey[dict]("second", lambda value: closed.append(("second", value)))
    shared = SharedContext()
    made = []
    a = shared.get_or_create(first, lambda: made.append(1) or [1])
    assert shared.get_or_create(first, lambda: made.append(2) or [2]) is a and made == [1]  # created once
    shared.get_or_create(second, dict)
    assert shared.get(second) == {} and shared.get(ResourceKey("other", print)) is None
    shared.close()
    assert closed == [("second", {}), ("first", [1])]
    assert shared.get(first) is None
    shared.close()  # idempotent: nothing closed twice
    assert len(closed) == 2

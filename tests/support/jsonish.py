"""Hypothesis strategies for JSON a client or an upstream could send: mostly the shapes an API
knows (``objects`` of known fields, ``one_of`` known values), now and then junk in their place."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


def or_junk(known: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``known``, now and then junk."""
    return st.one_of(known, known, known, known, JUNK)


def one_of(*values: Any) -> st.SearchStrategy[Any]:
    return or_junk(st.sampled_from(values))


def objects(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Objects with some of ``fields``, or now and then junk."""
    return or_junk(st.fixed_dictionaries({}, optional=fields))


def lists(items: st.SearchStrategy[Any], size: int) -> st.SearchStrategy[Any]:
    return or_junk(st.lists(items, max_size=size))


TEXT = or_junk(st.text(max_size=3))

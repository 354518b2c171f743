"""AppTest checks of the Streamlit app (streamlit.testing.v1, no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(autouse=True)
def _fresh_caches():
    # st.cache_data is process-global and survives across AppTest instances.
    st.cache_data.clear()
    st.cache_resource.clear()


def test_default_page_renders_without_exception():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.title[0].value.startswith("pipeplan")

import pytest
from web_cases import routes

from lumos.curation.sample import serve


@pytest.fixture(scope="module")
def served():
    """The web fixtures' images on a 127.0.0.1 HTTP server."""
    with serve(routes()) as s:
        yield s

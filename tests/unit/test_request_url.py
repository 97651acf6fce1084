"""`meta.url` (`request_url`) from the Host header parsed once per scheme and header: the same
URL `request.url` would give, without the query string."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from service.api.middlewares import request_url


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.example.org", "/api/jobs/a?wait=5", "http://api.example.org/api/jobs/a"),
        ("api.example.org:80", "/api/jobs/a", "http://api.example.org/api/jobs/a"),
        ("api.example.org:8080", "/api/jobs/a", "http://api.example.org:8080/api/jobs/a"),
        ("[::1]:8080", "/api/jobs/a", "http://[::1]:8080/api/jobs/a"),
        ("API.Example.org", "/api/jobs/a", "http://api.example.org/api/jobs/a"),
    ],
)
def test_the_url_is_the_one_the_client_asked_for(host: str, path: str, expected: str) -> None:
    request = make_mocked_request("GET", path, headers={"Host": host})
    assert request_url(request) == expected
    assert request_url(request) == str(request.url.with_query(None))  # and again: cached


@pytest.mark.parametrize("host", ["a:b:c", "h:99999"])
def test_a_malformed_host_leaves_the_path_each_time(host: str) -> None:
    for _ in range(2):  # a failure is not kept as an answer
        request = make_mocked_request("GET", "/api/jobs/a", headers={"Host": host})
        assert request_url(request) == "/api/jobs/a"

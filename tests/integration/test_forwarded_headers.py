"""TRUSTED_PROXIES: `meta.url` takes X-Forwarded-Proto and X-Forwarded-Host from a trusted
direct peer only (the test client connects from 127.0.0.1 over real HTTP), the last value
of each, and ignores values that are not a scheme or a host."""

from __future__ import annotations

import ipaddress

import pytest

from service.api.middlewares import peer_is_trusted
from service.config import ConfigError, Settings
from tests.conftest import bearer
from tests.integration.conftest import app_for

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


async def client_for(aiohttp_client, settings: Settings, trusted: tuple):
    return await aiohttp_client(app_for(settings.with_changes(trusted_proxies=trusted)))


async def meta_url(client, path: str = "/health/live", **headers: str) -> str:
    response = await client.get(path, headers=headers)
    assert response.status < 500, await response.text()
    return (await response.json())["meta"]["url"]


async def test_a_trusted_proxy_gives_the_scheme_and_the_host(aiohttp_client, settings, db):
    client = await client_for(aiohttp_client, settings, LOOPBACK)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    assert await meta_url(client, **forwarded) == "https://api.example.com/health/live"
    # A port that is not the scheme's default stays; the host is lowercased.
    assert (
        await meta_url(client, **{**forwarded, "X-Forwarded-Host": "API.example.com:8443"})
        == "https://api.example.com:8443/health/live"
    )
    # Either header alone: the other part comes from the connection.
    only_proto = await meta_url(client, **{"X-Forwarded-Proto": "https"})
    assert only_proto == f"https://127.0.0.1:{client.port}/health/live"
    only_host = await meta_url(client, **{"X-Forwarded-Host": "api.example.com"})
    assert only_host == "http://api.example.com/health/live"
    # Errors render the same meta.url (the error envelope of a 404 poll).
    response = await client.get("/api/jobs/some-job", headers={**bearer(), **forwarded})
    assert response.status == 404
    assert (await response.json())["meta"]["url"] == "https://api.example.com/api/jobs/some-job"


async def test_the_last_value_counts(aiohttp_client, settings, db):
    client = await client_for(aiohttp_client, settings, LOOPBACK)
    url = await meta_url(
        client,
        **{
            "X-Forwarded-Proto": "http, https",
            "X-Forwarded-Host": "spoofed.example, api.example.com",
        },
    )
    assert url == "https://api.example.com/health/live"
    # Several header lines: the last line's last value.
    response = await client.get(
        "/health/live",
        headers=[
            ("X-Forwarded-Host", "spoofed.example"),
            ("X-Forwarded-Host", "first.example, api.example.com"),
        ],
    )
    assert (await response.json())["meta"]["url"] == "http://api.example.com/health/live"


@pytest.mark.parametrize("trusted", [(), ELSEWHERE], ids=["none", "other-networks"])
async def test_an_untrusted_peer_is_not_believed(aiohttp_client, settings, db, trusted):
    client = await client_for(aiohttp_client, settings, trusted)
    url = await meta_url(
        client, **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    )
    assert url == f"http://127.0.0.1:{client.port}/health/live"


@pytest.mark.parametrize(
    ("proto", "host"),
    [
        ("ftp", "evil.example/path"),
        ("https://x", "a b"),
        ("HTTPS;x", "evil.example:99999"),
        ("", "[::zz]:80"),
        ("javascript", "evil.example:0"),
        ("http s", "-evil.example"),
        ("https\t,", "user@evil.example"),
        ("x" * 5000, "a" * 300 + ".example"),
        ("https, ftp", "ok.example, "),
    ],
)
async def test_garbage_is_ignored(aiohttp_client, settings, db, proto, host):
    client = await client_for(aiohttp_client, settings, LOOPBACK)
    response = await client.get(
        "/health/live", headers={"X-Forwarded-Proto": proto, "X-Forwarded-Host": host}
    )
    assert response.status == 200
    assert (await response.json())["meta"]["url"] == (f"http://127.0.0.1:{client.port}/health/live")


async def test_an_ipv6_host_and_a_mixed_case_scheme(aiohttp_client, settings, db):
    client = await client_for(aiohttp_client, settings, LOOPBACK)
    url = await meta_url(client, **{"X-Forwarded-Proto": "HTTPS", "X-Forwarded-Host": "[::1]"})
    assert url == "https://[::1]/health/live"


def test_trusted_proxies_are_read_once_and_checked():
    settings = Settings.from_env({"TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.7 ,,fd00::/8 "})
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert Settings.from_env({}).trusted_proxies == ()
    for wrong in ("10.0.0.1/8", "proxy.local", "10.0.0.0/33", "*"):
        with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
            Settings.from_env({"TRUSTED_PROXIES": wrong})


def test_peer_addresses_are_matched_by_network():
    networks = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert peer_is_trusted("10.1.2.3", networks)
    assert peer_is_trusted("::ffff:10.1.2.3", networks)  # IPv4 on a dual-stack socket
    assert peer_is_trusted("fd00::1%eth0", networks)  # a scoped IPv6 address
    assert not peer_is_trusted("11.0.0.1", networks)
    assert not peer_is_trusted("fe80::1", networks)
    assert not peer_is_trusted("/run/medevents.sock", networks)

"""Only the public web is fetched: the URL filter, the address check, the connect-time guard (redirects
included) and the whole `lumos-curate laion` path with the guard on. All traffic stays on loopback."""

import base64
import http.client
import json
import socket
import urllib.error
import urllib.request

import lance
import pyarrow as pa
import pytest
from web_cases import GOOD, Case, write_metadata

from lumos.curation.download import DownloadConfig
from lumos.curation.sample import Route, encode, serve, synthetic_image
from lumos.floor.errors import UserError
from lumos.curation.url_guard import (PRIVATE_MARKER, SCHEME_MARKER, HttpUrl, RefusedAddress, UrlGuard, guarded,
                                      refusal_reason)
from lumos.curation.web_job import WebJob, run_web_job

REFUSED = [
    # IPv4
    "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1", "127.0.0.1", "127.8.9.10",
    "169.254.169.254", "169.254.170.2", "169.254.1.1", "100.64.0.1", "100.100.100.200", "100.127.255.254",
    "224.0.0.1", "239.255.255.250", "0.0.0.0", "0.1.2.3", "240.0.0.1", "255.255.255.255", "192.0.0.192",
    "198.18.0.1",
    # IPv6
    "::1", "::", "fe80::1", "fe80::1%1", "fc00::1", "fd00:ec2::254", "fd12:3456::1", "ff02::1", "ff05::2",
    "fec0::1", "2001:db8::1",
    # IPv4 inside IPv6: mapped, NAT64, 6to4
    "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1", "2002:a00:1::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "172.32.0.1", "100.128.0.1", "2001:4860:4860::8888",
           "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address):
    assert not UrlGuard().allows(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert UrlGuard().allows(address)


def test_the_test_hook_makes_exactly_the_named_address_public():
    guard = UrlGuard(also_public=frozenset({"127.0.0.1"}))
    assert guard.allows("127.0.0.1") and not guard.allows("127.0.0.2") and not guard.allows("::1")


def test_the_filter_keeps_only_http_urls_with_a_host():
    urls = {
        "http://example.com/a.jpg": None, "https://example.com": None, "HTTPS://Example.com:8443/a?b#c": None,
        "http://user:pw@example.com/a.jpg": None, "http://[2001:db8::1]:80/a.jpg": None, "http://10.0.0.1/a": None,
        "file:///etc/hostname": "url_scheme", "data:image/jpeg;base64,AAAA": "url_scheme",
        "ftp://127.0.0.1/x.jpg": "url_scheme", "http:///nohost.jpg": "url_scheme", "http://:80/x": "url_scheme",
        "http://user@/x": "url_scheme", "javascript:alert(1)": "url_scheme", "//example.com/a.jpg": "url_scheme",
        "example.com/a.jpg": "url_scheme", "http:/example.com": "url_scheme", "gopher://example.com/": "url_scheme",
        " http://example.com/": "url_scheme", "not a url": "url_scheme", None: "url_scheme",
    }
    table = pa.table({"url": pa.array(list(urls), pa.string())})
    assert dict(zip(urls, HttpUrl("url").drop_reasons(table).to_pylist())) == urls


def test_a_name_that_resolves_to_loopback_is_refused_before_connecting():
    with pytest.raises(RefusedAddress, match="localhost resolves to"):
        UrlGuard().resolve("localhost", 80)
    with serve({"/a.jpg": Route(b"secret")}) as served, guarded():
        port = served.base_url.rsplit(":", 1)[1]
        with pytest.raises(urllib.error.URLError) as err:
            urllib.request.urlopen(f"http://localhost:{port}/a.jpg", timeout=5)
        assert PRIVATE_MARKER in str(err.value)
        assert refusal_reason(str(err.value)) == "url_private"
        assert not served.hits


def _bindable(host):
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _bindable("127.0.0.2"), reason="127.0.0.2 is not a loopback address on this machine")
def test_each_redirect_hop_is_checked():
    original = http.client.HTTPConnection.connect
    with serve({"/secret.jpg": Route(b"secret")}, host="127.0.0.2") as inner:
        routes = {
            "/ok.jpg": Route(b"public"),
            "/hop": Route(b"", status=302, headers=(("Location", f"{inner.base_url}/secret.jpg"),)),
            "/to-ftp": Route(b"", status=302, headers=(("Location", "ftp://127.0.0.2/secret.jpg"),)),
        }
        with serve(routes) as outer, guarded(UrlGuard(also_public=frozenset({"127.0.0.1"}))):
            with urllib.request.urlopen(f"{outer.base_url}/ok.jpg", timeout=5) as r:  # the "public" host works
                assert r.read() == b"public"
            with pytest.raises(urllib.error.URLError) as err:
                urllib.request.urlopen(f"{outer.base_url}/hop", timeout=5)
            assert PRIVATE_MARKER in str(err.value) and "127.0.0.2" in str(err.value)
            with pytest.raises(urllib.error.URLError) as err:  # urllib follows http -> ftp redirects
                urllib.request.urlopen(f"{outer.base_url}/to-ftp", timeout=5)
            assert SCHEME_MARKER in str(err.value)
            with pytest.raises(urllib.error.URLError, match=r"not http\(s\)"):
                urllib.request.urlopen("file:///etc/hostname", timeout=5)
            assert dict(outer.hits) == {"/ok.jpg": 1, "/hop": 1, "/to-ftp": 1}
        assert not inner.hits
    assert http.client.HTTPConnection.connect is original  # the patch is gone with the context


def test_hostile_urls_are_never_fetched_through_the_real_download_path(tmp_path, ray_session):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encode(synthetic_image(640, 512, seed=1)))
    jpeg = base64.b64encode(encode(synthetic_image(640, 512, seed=2))).decode()
    with serve({"/a.jpg": Route(encode(synthetic_image(640, 512, seed=3)))}) as served:
        urls = [f"file://{secret}", f"data:image/jpeg;base64,{jpeg}", "ftp://127.0.0.1/x.jpg",
                "http:///nohost.jpg", f"{served.base_url}/a.jpg"]
        cases = [Case(f"hostile{i}", 640, 512, caption="hostile", expect=None, url=u, **GOOD)
                 for i, u in enumerate(urls)]
        metadata = write_metadata(str(tmp_path / "meta.parquet"), "laion-upper", served.base_url, cases)
        out = tmp_path / "out"
        job = WebJob(source="laion", input=metadata, output=str(out),
                     download_config=DownloadConfig(workers=1, threads=2, shard_size=8))  # the guard is on
        stats = run_web_job(job, say=lambda *_: None)
        assert not served.hits  # the request log: nothing reached the server

    assert (stats["rows"], stats["kept"], stats["dropped"]) == (5, 0, {"url_scheme": 4, "url_private": 1})
    assert stats["stages"]["filter"]["dropped"] == {"url_scheme": 4}
    assert stats["stages"]["download"] == {"rows": 1, "kept": 0, "dropped": {"url_private": 1}}
    assert lance.dataset(str(out / "images.lance")).count_rows() == 0
    with open(out / "_work" / "job.json") as f:
        assert json.load(f)["allow_private_urls"] is False

    # the same output with the guard off is another job: a resumed run cannot switch the guard
    unguarded = WebJob(source="laion", input=metadata, output=str(out),
                       download_config=DownloadConfig(workers=1, threads=2, shard_size=8, allow_private_urls=True))
    with pytest.raises(UserError, match="differs in: allow_private_urls"):
        run_web_job(unguarded, say=lambda *_: None)

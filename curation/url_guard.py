"""Only the public web is fetched: a filter on the text of each URL, and a guard on each connection.

1. `HttpUrl` (a filter, in WebFilterConfig.filters()) keeps only `http`/`https` URLs that name a host; any
   other URL (file:, data:, ftp:, javascript:, `http:///x`, garbage) is dropped under `url_scheme`.
2. `guarded()` patches this process's `http.client.HTTPConnection.connect` (HTTPS goes through it too) so
   that each connection resolves its host once, refuses it when any address is not public (`is_public`)
   and connects to the very addresses it checked: a DNS answer that changes between the check and the
   connect (rebinding) cannot slip through. Redirects open new connections, so each hop is checked; a
   redirect to ftp: (urllib follows those), file: or data: is refused too.
3. `GuardedDownloader` stands in for img2dataset's `Downloader` (a `LumosDownloader`, so it decodes as
   web_decode.py says) and installs the guard in whichever process runs a shard (a spawned
   multiprocessing worker or a Ray worker): it is pickled by reference to this module, so the worker
   imports the guard with it.
A refused request fails with a message holding PRIVATE_MARKER or SCHEME_MARKER; `refusal_reason` turns the
error message img2dataset records into the drop reason.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.filters import Filter
from lumos.curation.web_decode import LumosDownloader

PRIVATE_MARKER = "[lumos url guard: not a public address]"
SCHEME_MARKER = "[lumos url guard: not http(s)]"

# scheme http/https (any case), optional user info, a host (name, IPv4 or [IPv6]), optional port, then the
# end or a path / query / fragment. RE2 syntax (pyarrow).
HTTP_URL = r"^https?://(?:[^/?#@]*@)?(?:\[[0-9a-f:.]+\]|[^/?#@:\[\]\s]+)(?::[0-9]*)?(?:[/?#]|$)"

# Refused whatever the version of Python's `ipaddress` says (its is_global/is_private tables changed in
# 3.11.10, 3.12.4 and 3.13): shared address space (carrier NAT; Alibaba's metadata server lives there),
# IETF protocol assignments, and the cloud metadata endpoints by name (all inside refused ranges anyway).
REFUSED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack
    "169.254.170.2",  # AWS ECS task credentials
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS over IPv6
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6-only hosts reach IPv4 sites through it: judge the IPv4


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address on the public internet; False for loopback, private, shared (100.64/10),
    link-local, multicast, reserved, unspecified and cloud-metadata addresses, in IPv4 or IPv6."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on the wire
            return is_public(ip.ipv4_mapped)
        if ip in NAT64:
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)  # tunnels carry an IPv4 inside
        if embedded is not None and not is_public(embedded):
            return False
    if ip in METADATA_ADDRESSES or any(ip in net for net in REFUSED_NETWORKS if net.version == ip.version):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local
                                 or ip.is_private or ip.is_unspecified)


class RefusedAddress(OSError):
    """A connection the guard refused; urllib wraps it in URLError, whose text img2dataset records."""


@dataclass(frozen=True)
class UrlGuard:
    """The policy of one guarded run. `also_public` (addresses as text) is a test hook: those addresses
    count as public, so a test can serve an "allowed" host and a refused one, both on loopback."""

    also_public: frozenset[str] = frozenset()

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope id (fe80::1%eth0)
        return str(ip) in self.also_public or is_public(ip)

    def resolve(self, host: str, port: int) -> list[tuple]:
        """getaddrinfo's answers for `host`, or RefusedAddress when any of them is not allowed."""
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        refused = sorted({info[4][0] for info in infos if not self.allows(info[4][0])})
        if refused:
            raise RefusedAddress(f"{PRIVATE_MARKER} {host} resolves to {', '.join(refused)}")
        return infos

    def create_connection(self, address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        """socket.create_connection, but to the addresses `resolve` checked: no second DNS lookup."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in self.resolve(host, port):
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                sock.close()
                error = err
        raise error or OSError(f"getaddrinfo returned no address for {host}")


_lock = threading.Lock()
_active: list[UrlGuard] = []  # the installed guards, innermost last; patches are in place while non-empty
_originals: dict = {}


def _guarded_connect(self):
    """HTTPConnection.connect (and so HTTPSConnection's, which calls it) through the innermost guard."""
    guard = _active[-1] if _active else UrlGuard()  # a connect racing the context's exit still fails closed
    self._create_connection = guard.create_connection
    return _originals["connect"](self)


def _refuse_scheme(self, req):
    raise urllib.error.URLError(f"{SCHEME_MARKER} {req.full_url[:200]}")


_SCHEME_HANDLERS = ((urllib.request.FileHandler, "file_open"), (urllib.request.FTPHandler, "ftp_open"),
                    (urllib.request.DataHandler, "data_open"))


@contextmanager
def guarded(guard: UrlGuard | None = None):
    """Guard every HTTP(S) connection and refuse file/ftp/data URLs opened by urllib in this process while
    the context is open (all threads: img2dataset downloads from a thread pool)."""
    with _lock:
        if not _active:
            _originals["connect"] = http.client.HTTPConnection.connect
            http.client.HTTPConnection.connect = _guarded_connect
            for cls, name in _SCHEME_HANDLERS:
                _originals[cls, name] = getattr(cls, name)
                setattr(cls, name, _refuse_scheme)
        _active.append(guard or UrlGuard())
    try:
        yield
    finally:
        with _lock:
            _active.pop()
            if not _active:
                http.client.HTTPConnection.connect = _originals.pop("connect")
                for cls, name in _SCHEME_HANDLERS:
                    setattr(cls, name, _originals.pop((cls, name)))


class GuardedDownloader(LumosDownloader):
    """Takes the place of img2dataset's `Downloader` (same arguments): our decode (web_decode.py), and each
    shard runs under `guarded()` in the worker process that runs it."""

    def __call__(self, row):
        with guarded():
            return super().__call__(row)


def refusal_reason(error_message: str | None) -> str | None:
    """The drop reason of a row whose download the guard refused (img2dataset's error text), else None."""
    if not error_message:
        return None
    if PRIVATE_MARKER in error_message:
        return "url_private"
    if SCHEME_MARKER in error_message:
        return "url_scheme"
    return None


@dataclass(frozen=True)
class HttpUrl(Filter):
    """Keep rows whose `field` is an http(s) URL with a host; drop the rest (NULL included) as `url_scheme`."""

    field: str

    def drop_reasons(self, table: pa.Table) -> pa.Array:
        urls = table[self.field].combine_chunks().cast(pa.string())
        ok = pc.match_substring_regex(urls, HTTP_URL, ignore_case=True).fill_null(False)
        return pc.if_else(ok, pa.scalar(None, pa.string()), pa.scalar("url_scheme", pa.string()))

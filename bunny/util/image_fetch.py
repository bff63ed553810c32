"""Downloading an image from an http(s) URL within a total deadline and a size cap, and (for
servers, which fetch what their clients name) only from public addresses.

`fetch_image(url, timeout, max_bytes, allow_private)` returns the body of a 200 answer:
- the whole download, name look-ups, connections, redirects, headers and body together, must end
  within `timeout` seconds: a server that sends one byte at a time is cut off at the deadline,
  not kept alive by each byte;
- a body larger than `max_bytes`, as declared by Content-Length or as counted, is refused;
- unless `allow_private`, every host, the first and each redirect's (at most `MAX_REDIRECTS`),
  must resolve only to public unicast addresses (`is_public_address`), and the connection goes to
  the address that was checked, so a DNS answer that changes after the check (DNS rebinding)
  can't send it elsewhere; https is still verified against the URL's host name.

Every failure to get a 200 answer (an address not allowed, no such host, a connection refused or
reset, a timeout, something that does not speak HTTP, an HTTP error status, too many redirects)
raises `FetchError` with one message, "could not fetch image <url>": a client can't tell a closed
port from a silent one, and the remote's answer is never echoed. The cause is in
`FetchError.detail`, for logs and for the operator's own tools (`bunny.util.mm_utils.load_image`).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
READ_SIZE = 64 * 1024
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses embedded in IPv6 by NAT64 gateways


class FetchError(Exception):
    """A download that failed; the message is generic, `detail` says why."""

    def __init__(self, url: str, detail: str, message: str | None = None) -> None:
        super().__init__(message or f"could not fetch image {url}")
        self.url, self.detail = url, detail


class FetchTooLarge(FetchError):
    """A body over the size cap (only a server that answered 200 can cause it)."""

    def __init__(self, url: str, max_bytes: int) -> None:
        super().__init__(url, f"more than {max_bytes} bytes", f"image {url} is larger than {max_bytes} bytes")


def is_public_address(address: str) -> bool:
    """Whether `address` is a globally routable unicast address (not loopback, private,
    link-local, shared, reserved, multicast or unspecified), also when IPv4 hides inside IPv6."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_unspecified
    )


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses `host` resolves to; the look-up is abandoned after `timeout` seconds."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    answer: dict[str, object] = {}
    done = threading.Event()

    def look_up() -> None:  # getaddrinfo has no timeout of its own
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            answer["error"] = err
        done.set()

    threading.Thread(target=look_up, name="image-url-dns", daemon=True).start()
    if not done.wait(timeout):
        raise OSError(f"looking up {host} took longer than the deadline")
    if "error" in answer:
        raise OSError(f"looking up {host} failed: {answer['error']}")
    return [info[4][0] for info in answer["infos"]]  # type: ignore[index]


def tls_context() -> ssl.SSLContext:
    """What https downloads verify certificates with: the system's trusted authorities."""
    return ssl.create_default_context()


def open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to `address` itself (tests map made-up public addresses to loopback here)."""
    return socket.create_connection((address, port), timeout)


class _Watchdog:
    """Shuts the watched sockets down when the deadline passes, which ends any read in progress."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.timer = threading.Timer(max(seconds, 0.0), self.fire)
        self.timer.daemon = True
        self.timer.start()

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.end

    def left(self) -> float:
        if self.passed():
            raise TimeoutError("the download took longer than its deadline")
        return self.end - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if self.expired:
                _shut(sock)

    def fire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                _shut(sock)

    def cancel(self) -> None:
        self.timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the checked `address`, with the URL's host name in the Host header."""

    def __init__(self, host: str, port: int, address: str, watchdog: _Watchdog) -> None:
        super().__init__(host, port, timeout=watchdog.left())
        self.address, self.watchdog = address, watchdog
        self.live_socket: socket.socket | None = None

    def connect(self) -> None:
        self.sock = self.live_socket = open_socket(self.address, self.port, self.watchdog.left())
        self.watchdog.watch(self.live_socket)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the checked `address`; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, watchdog: _Watchdog) -> None:
        super().__init__(host, port, timeout=watchdog.left(), context=tls_context())
        self.address, self.watchdog = address, watchdog
        self.live_socket: socket.socket | None = None

    def connect(self) -> None:
        raw = open_socket(self.address, self.port, self.watchdog.left())
        self.sock = self.live_socket = self._context.wrap_socket(
            raw, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.watchdog.watch(self.live_socket)  # before the handshake, which a server may trickle too
        self.live_socket.do_handshake()


def _checked_address(host: str, port: int, allow_private: bool, watchdog: _Watchdog) -> str:
    addresses = resolve(host, port, watchdog.left())
    if not addresses:
        raise OSError(f"{host} has no address")
    if not allow_private:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise PermissionError(f"{host} resolves to {refused[0]}, which is not a public address")
    return addresses[0]


def _get(url: str, max_bytes: int, allow_private: bool, watchdog: _Watchdog) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url[:80]!r} is not an http(s) URL")
        port = parts.port or (443 if scheme == "https" else 80)
        address = _checked_address(parts.hostname, port, allow_private, watchdog)
        kind = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = kind(parts.hostname, port, address, watchdog)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request(
                "GET", target, headers={"User-Agent": "Bunny", "Accept": "image/*", "Accept-Encoding": "identity"}
            )
            response = connection.getresponse()
            if response.status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise ValueError(f"HTTP {response.status} without a Location")
                url = urllib.parse.urljoin(url, location.strip())
                continue
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
                raise FetchTooLarge(url, max_bytes)
            body = bytearray()
            while True:
                connection.live_socket.settimeout(watchdog.left())  # `sock` is gone once the response owns it
                piece = response.read1(READ_SIZE)  # one receive at most: the deadline is checked between them
                if not piece:  # the end, or the watchdog shut the socket
                    watchdog.left()
                    if declared is not None and declared.strip().isdigit() and len(body) != int(declared):
                        raise ValueError(f"the body ended after {len(body)} of {declared.strip()} bytes")
                    return bytes(body)
                body += piece
                if len(body) > max_bytes:
                    raise FetchTooLarge(url, max_bytes)
        finally:
            connection.close()
            if connection.live_socket is not None:
                connection.live_socket.close()
    raise ValueError(f"more than {MAX_REDIRECTS} redirects")


def fetch_image(url: str, timeout: float, max_bytes: int, allow_private: bool = False) -> bytes:
    """The body of `url` (see the module docstring); `FetchError` otherwise."""
    if timeout <= 0:
        raise FetchError(url, "no time was left for the download")
    watchdog = _Watchdog(timeout)
    try:
        return _get(url, max_bytes, allow_private, watchdog)
    except FetchTooLarge:
        raise FetchTooLarge(url, max_bytes) from None  # named by the URL asked for, not a redirect's
    except (OSError, http.client.HTTPException, ValueError, UnicodeError) as err:
        detail = str(err) or type(err).__name__
        if watchdog.passed():
            detail = f"the download took longer than {timeout:g} s"
        raise FetchError(url, detail) from None
    finally:
        watchdog.cancel()

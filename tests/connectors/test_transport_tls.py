"""TLS against a real local HTTPS peer: verification is on, and a certificate it refuses is a
configuration problem (never retried), as is a CA bundle that is not there."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.connection import Secret
from connectors.errors import ConfigurationError, FatalConnectorError, RetriableConnectorError
from connectors.ministry_ledger.client import ReceiptLedgerClient
from connectors.transport import HttpTransport, MemoryRecorder, RetryPolicy


def _self_signed(tmp: Path, *, ip: str | None = "127.0.0.1", dns: str | None = None) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns or ip or "peer")])
    alt = [x509.IPAddress(ipaddress.ip_address(ip))] if ip else [x509.DNSName(dns or "peer")]
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Https:
    def __init__(self, cert: Path, key: Path):
        self.requests = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = json.dumps({"ok": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def https_peer(tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    made = []

    def make(**names):
        cert, key = _self_signed(tmp_path, **names)
        peer = _Https(cert, key)
        made.append(peer)
        return peer, cert

    yield make
    for peer in made:
        peer.close()


def _transport(url: str, recorder: MemoryRecorder, slept: list[float]) -> HttpTransport:
    return HttpTransport(peer="portal", base_url=url, recorder=recorder, retry=RetryPolicy(max_attempts=3),
                         sleep=slept.append, seed=1, read_timeout=5)


def test_a_peer_certificate_that_does_not_verify_is_fatal_and_asked_once(https_peer):
    """A self-signed certificate was a PeerUnavailable "connection failed (SSLError)", asked three
    times and then again by every task retry: no retry makes it verify. It is a FatalConnectorError
    naming the refusal, after one attempt."""
    peer, _cert = https_peer()
    recorder, slept = MemoryRecorder(), []
    with pytest.raises(FatalConnectorError) as caught:
        _transport(peer.url, recorder, slept).send("POST", "/x", operation="op", json_body={})
    assert not isinstance(caught.value, RetriableConnectorError)
    assert "TLS certificate" in str(caught.value) and "self-signed certificate" in str(caught.value)
    assert [e.outcome for e in recorder.exchanges] == ["transport_error"]
    assert slept == [] and peer.requests == 0


def test_a_certificate_for_another_host_is_fatal(https_peer, monkeypatch):
    peer, cert = https_peer(ip=None, dns="dichvucong.gov.vn")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trusted, but not the host we call
    recorder, slept = MemoryRecorder(), []
    with pytest.raises(FatalConnectorError, match="TLS certificate") as caught:
        _transport(peer.url, recorder, slept).send("GET", "/x", operation="op")
    assert "127.0.0.1" in str(caught.value)
    assert len(recorder.exchanges) == 1 and slept == []


def test_a_trusted_certificate_is_answered(https_peer, monkeypatch):
    peer, cert = https_peer()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    response = _transport(peer.url, MemoryRecorder(), []).send("GET", "/x", operation="op")
    assert response.status_code == 200 and peer.requests == 1


def test_the_ledger_refuses_an_unverified_certificate_once(https_peer):
    peer, _cert = https_peer()
    recorder, slept = MemoryRecorder(), []
    client = ReceiptLedgerClient(peer.url, "bo-tai-chinh", Secret("pw"), recorder=recorder, sleep=slept.append,
                                 retry=RetryPolicy(max_attempts=3))
    with pytest.raises(FatalConnectorError, match="self-signed certificate"):
        client.get_receipt("BL2026-000001")
    assert len(recorder.exchanges) == 1 and slept == []


def test_a_ca_bundle_that_is_not_there_is_a_configuration_error_before_any_call(monkeypatch, tmp_path):
    """requests raised a bare OSError on every call (outside the error tree); the transport
    now refuses to be made, naming the variable and the path."""
    missing = tmp_path / "tinh-ca.pem"
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(missing))
    with pytest.raises(ConfigurationError, match=rf"REQUESTS_CA_BUNDLE names {missing}, which does not exist"):
        HttpTransport(peer="portal", base_url="https://dichvucong.gov.vn")
    with pytest.raises(ConfigurationError, match="REQUESTS_CA_BUNDLE"):
        ReceiptLedgerClient("https://ledger.mof.gov.vn", "u", Secret("pw"))
    HttpTransport(peer="onestop", base_url="http://127.0.0.1:8081")  # plain HTTP uses no CA bundle

"""The local stack's throwaway CA: what it issues, and when it issues anew."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local.throwaway_ca import OPERATOR, SERVICES, ensure_throwaway_ca, write_throwaway_ca


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_service_gets_a_server_and_client_certificate_signed_by_the_ca(
    tmp_path: Path,
) -> None:
    certs = write_throwaway_ca(tmp_path)
    ca = load(certs.ca)
    assert set(certs.identities) == {*SERVICES, OPERATOR}
    for name in SERVICES:
        cert = load(certs[name].cert)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {name, "localhost"}
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert stat.S_IMODE(certs[name].key.stat().st_mode) == 0o600
    operator = load(certs[OPERATOR].cert)
    operator.verify_directly_issued_by(ca)
    usage = operator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_ca_key_is_never_written(tmp_path: Path) -> None:
    certs = write_throwaway_ca(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    expected = {certs.ca.name} | {
        p.name for i in certs.identities.values() for p in (i.cert, i.key)
    }
    assert written == expected


def test_a_complete_set_is_reused_and_an_incomplete_one_replaced(tmp_path: Path) -> None:
    first = ensure_throwaway_ca(tmp_path)
    ca_pem = first.ca.read_bytes()
    assert ensure_throwaway_ca(tmp_path).ca.read_bytes() == ca_pem
    first["router"].key.unlink()
    second = ensure_throwaway_ca(tmp_path)
    assert second.ca.read_bytes() != ca_pem
    load(second["auth"].cert).verify_directly_issued_by(load(second.ca))

"""A throwaway certificate authority for running the mesh with (mutual) TLS on
one machine: a CA, one certificate per service (server and client: the same
identity answers calls and makes them), and an `operator` client certificate
for the local stack and the CLI.

`python -m deploy.local.throwaway_ca --out .maas/tls` writes PEM files:

    ca.pem                     the mesh CA (what every peer trusts)
    <service>.pem / -key.pem   per service; SANs: the service name, localhost, 127.0.0.1
    operator.pem / -key.pem    client only

The CA's private key is never written: nothing can be signed into the mesh
later, and a fresh CA is made whenever the set is incomplete or expiring."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("gateway", "auth", "router", "inference", "anomaly")
OPERATOR = "operator"
# Long enough for a development session, short enough that a leaked set ages out.
VALID_FOR = dt.timedelta(days=30)
# Certificates this close to expiry are replaced rather than reused.
RENEW_BEFORE = dt.timedelta(days=1)
# Clocks of processes on one machine agree, but a certificate dated "now"
# can still look not-yet-valid to a peer that rounds down.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Identity:
    """Where one identity's certificate and key are."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class MeshCertificates:
    directory: Path
    ca: Path
    identities: dict[str, Identity]

    def __getitem__(self, name: str) -> Identity:
        return self.identities[name]


def certificate_paths(directory: Path, names: Sequence[str]) -> MeshCertificates:
    identities = {
        name: Identity(directory / f"{name}.pem", directory / f"{name}-key.pem") for name in names
    }
    return MeshCertificates(directory, directory / "ca.pem", identities)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "maas local mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    path.touch(mode=mode)
    path.chmod(mode)
    path.write_bytes(data)


def _issue(
    name: str,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    server: bool,
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    sans: list[x509.GeneralName] = []
    for host in (name, *hosts) if server else (name,):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_throwaway_ca(
    directory: Path,
    services: Sequence[str] = SERVICES,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
) -> MeshCertificates:
    """Writes a new CA and a certificate for each of `services` (server and
    client) plus an `operator` client certificate into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("maas throwaway CA"))
        .issuer_name(_name("maas throwaway CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = certificate_paths(directory, [*services, OPERATOR])
    _write(paths.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    for name, identity in paths.identities.items():
        cert, key = _issue(
            name, ca_key=ca_key, ca_cert=ca_cert, hosts=hosts, server=name != OPERATOR, now=now
        )
        _write(identity.key, _private_key_pem(key), 0o600)
        _write(identity.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def _still_good(path: Path, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def ensure_throwaway_ca(directory: Path, services: Sequence[str] = SERVICES) -> MeshCertificates:
    """The certificates in `directory` if they are all there and not about to
    expire; otherwise a fresh set (a new CA: old certificates stop working)."""
    paths = certificate_paths(directory, [*services, OPERATOR])
    now = dt.datetime.now(dt.UTC)
    files = [paths.ca, *(p for i in paths.identities.values() for p in (i.cert, i.key))]
    if all(path.exists() for path in files) and all(
        _still_good(path, now) for path in (paths.ca, *(i.cert for i in paths.identities.values()))
    ):
        return paths
    return write_throwaway_ca(directory, services)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".maas/tls"))
    parser.add_argument(
        "--service", action="append", dest="services", help="default: the five mesh services"
    )
    args = parser.parse_args()
    paths = write_throwaway_ca(args.out, args.services or SERVICES)
    print(f"CA and certificates for {', '.join(sorted(paths.identities))} in {paths.directory}")


if __name__ == "__main__":
    main()
